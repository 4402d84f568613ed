"""Prometheus metrics under vLLM's names, so existing vLLM dashboards work unchanged.

Latencies (TTFT, inter-token, end-to-end) are measured in the API process when outputs
arrive; the engine's own counters (tokens, prefix cache, KV usage, queue sizes) come from the
stats the engine core sends and are exported by a collector at scrape time. Every series has
`model_name` and `engine` labels (the engine label tells data-parallel replicas apart).

With several API processes (`--api-server-count`), each counts its own requests; prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the parent before it starts them) adds them up
at scrape time, whichever process answers.

tenk adds, per replica: `tenk:engine_up` (1 while it takes requests), `tenk:engine_requests_routed_total`
(engine requests the load balancer sent it), `tenk:engine_requests_failed_total` (requests in
flight when it died) and `tenk:engine_restarts_total`.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tenk.server.wire import Stats

# vLLM's bucket edges, so histograms from tenk and vLLM can be compared bucket by bucket.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
LABELS = ("model_name", "engine")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineStatsCollector:
    """Exports the latest engine-core stats of each engine as gauges and counters."""

    def __init__(self, model_name: str, stats_by_engine: Callable[[], dict[str, Stats | None]],
                 up_by_engine: Callable[[], dict[str, bool]] | None = None):  # fmt: skip
        self.model_name = model_name
        self.stats_by_engine = stats_by_engine
        self.up_by_engine = up_by_engine

    def collect(self):
        gauges = {
            "vllm:num_requests_running": ("Number of requests in model execution batches.", "num_running"),
            "vllm:num_requests_waiting": ("Number of requests waiting to be processed.", "num_waiting"),
            "vllm:kv_cache_usage_perc": ("KV-cache usage. 1 means 100 percent usage.", "kv_cache_usage"),
        }
        counters = {
            "vllm:prompt_tokens": ("Number of prefill tokens processed.", "prompt_tokens_total"),
            "vllm:generation_tokens": ("Number of generation tokens processed.", "generation_tokens_total"),
            "vllm:prefix_cache_queries": ("Prefix cache queries, in terms of number of queried tokens.",
                                          "prefix_cache_queries"),
            "vllm:prefix_cache_hits": ("Prefix cache hits, in terms of number of cached tokens.", "prefix_cache_hits"),
            "vllm:num_preemptions": ("Cumulative number of preemptions from the engine.", "num_preemptions"),
        }  # fmt: skip
        per_engine = self.stats_by_engine()
        for name, (doc, attr) in gauges.items():
            fam = GaugeMetricFamily(name, doc, labels=LABELS)
            for engine, stats in per_engine.items():
                fam.add_metric([self.model_name, engine], float(getattr(stats, attr)) if stats else 0.0)
            yield fam
        for name, (doc, attr) in counters.items():
            fam = CounterMetricFamily(name, doc, labels=LABELS)
            for engine, stats in per_engine.items():
                fam.add_metric([self.model_name, engine], float(getattr(stats, attr)) if stats else 0.0)
            yield fam
        if self.up_by_engine is not None:
            fam = GaugeMetricFamily("tenk:engine_up", "1 while the engine replica takes requests, 0 while it is "
                                    "down or restarting.", labels=LABELS)  # fmt: skip
            for engine, up in self.up_by_engine().items():
                fam.add_metric([self.model_name, engine], 1.0 if up else 0.0)
            yield fam


class ServerMetrics:
    def __init__(self, model_name: str, stats_by_engine: Callable[[], dict[str, Stats | None]],
                 up_by_engine: Callable[[], dict[str, bool]] | None = None,
                 multiprocess_dir: str | None = None):  # fmt: skip
        # A registry per server, so several servers can live in one process (tests, demo).
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        self.model_name = model_name
        self._ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                               LABELS, buckets=TTFT_BUCKETS, registry=self.registry)  # fmt: skip
        self._itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                              LABELS, buckets=ITL_BUCKETS, registry=self.registry)  # fmt: skip
        self._e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                              LABELS, buckets=E2E_BUCKETS, registry=self.registry)  # fmt: skip
        self._success = Counter("vllm:request_success", "Count of successfully processed requests.",
                                (*LABELS, "finished_reason"), registry=self.registry)  # fmt: skip
        self._routed = Counter("tenk:engine_requests_routed", "Engine requests the load balancer sent to the replica.",
                               LABELS, registry=self.registry)  # fmt: skip
        self._failed = Counter("tenk:engine_requests_failed", "Engine requests that failed (503) because their "
                               "replica died while running them.", LABELS, registry=self.registry)  # fmt: skip
        self._restarts = Counter("tenk:engine_restarts", "Times the replica was restarted after it died.", LABELS,
                                 registry=self.registry)  # fmt: skip
        self._engine_stats = _EngineStatsCollector(model_name, stats_by_engine, up_by_engine)
        self.registry.register(self._engine_stats)
        self._children: dict[str, tuple] = {}

    def _for(self, engine: str):
        ch = self._children.get(engine)
        if ch is None:
            lv = (self.model_name, engine)
            ch = self._children[engine] = (self._ttft.labels(*lv), self._itl.labels(*lv), self._e2e.labels(*lv))
        return ch

    def observe_ttft(self, seconds: float, engine: str = "0") -> None:
        self._for(engine)[0].observe(seconds)

    def observe_itl(self, seconds: float, engine: str = "0") -> None:
        self._for(engine)[1].observe(seconds)

    def observe_finished(self, e2e_seconds: float, finish_reason: str, engine: str = "0") -> None:
        self._for(engine)[2].observe(e2e_seconds)
        self._success.labels(self.model_name, engine, finish_reason).inc()

    def add_engine(self, engine: str) -> None:
        """Show a replica's counters at 0 from the start (dashboards see every replica)."""
        for c in (self._routed, self._failed, self._restarts):
            c.labels(self.model_name, engine)

    def routed(self, engine: str) -> None:
        self._routed.labels(self.model_name, engine).inc()

    def replica_failed(self, engine: str, num_requests: int) -> None:
        self._failed.labels(self.model_name, engine).inc(num_requests)

    def replica_restarted(self, engine: str) -> None:
        self._restarts.labels(self.model_name, engine).inc()

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        # Every API process's counters and histograms from their files; the engines' own stats
        # are the same in every API process, so this one's are exported once.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        registry.register(self._engine_stats)
        return generate_latest(registry)
