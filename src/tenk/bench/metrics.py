"""Statistics of one level from its RequestRecords (DESIGN.md, "Benchmark definitions").

Definitions, all in this file so the code is the reference:
- whole run: from the first request sent to the last one finished (failed ones included, since
  they occupied the server too). output tok/s = sum of the server's usage.completion_tokens of
  successful requests / that time; total tok/s adds their usage.prompt_tokens.
- steady state, closed loop with c slots: the window [t0, t1] where every slot holds a request
  that is producing tokens.
    t0 = the moment the first c requests sent have all received their first token (the ramp,
         where the first wave is still in prefill, is over);
    t1 = the first completion after the last request was sent (from then on, slots drain and
         are never refilled).
  Output tokens in the window are the streamed chunks arriving inside it (each chunk weighted
  by that request's usage tokens / its chunk count); input tokens are those of requests whose
  first token arrives inside it. No window (None) when t1 <= t0, e.g. a single wave.
- steady state, request-rate mode: from the first first-token to the last request sent.
- latencies (successful requests only; failures never enter them): TTFT = first text chunk -
  send; E2E = last byte - send; TPOT = (E2E - TTFT) / (output tokens - 1); ITL = gaps between
  consecutive text chunks, pooled over requests. Reported in milliseconds.
- goodput: successful requests meeting every SLO bound, per second of the whole run.
- unfinished: requests cut off by an interrupt or the level timeout; neither ok nor failed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from tenk.bench.config import SLO
from tenk.bench.records import RequestRecord

TOKEN_MISMATCH_WARN = 0.01  # DESIGN.md: warn when usage and the client's count differ by >1%


@dataclass(slots=True)
class Stats:
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None
    n: int = 0

    @classmethod
    def of(cls, values, scale: float = 1.0) -> "Stats":
        a = np.asarray([v for v in values if v is not None], dtype=np.float64) * scale
        if a.size == 0:
            return cls()
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(float(a.mean()), float(p50), float(p90), float(p99), float(a.min()), float(a.max()), int(a.size))


@dataclass(slots=True)
class LevelResult:
    concurrency: int | None
    request_rate: float | None
    num_prompts: int
    completed: int = 0
    failed: int = 0
    unfinished: int = 0
    errors: list[dict] = field(default_factory=list)  # [{"error": text, "count": n}], most common first
    duration_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    output_throughput: float = 0.0  # tok/s, whole run
    total_throughput: float = 0.0  # tok/s, whole run, input + output
    request_throughput: float = 0.0  # successful requests/s
    steady: dict | None = None  # {"start_s","end_s","duration_s","output_throughput","total_throughput"}
    ttft_ms: Stats = field(default_factory=Stats)
    tpot_ms: Stats = field(default_factory=Stats)
    itl_ms: Stats = field(default_factory=Stats)
    e2e_ms: Stats = field(default_factory=Stats)
    goodput: dict | None = None  # {"slo", "good_requests", "request_goodput", "attainment"}
    token_check: dict = field(default_factory=dict)
    input_check: dict = field(default_factory=dict)
    server_metrics: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    interrupted: bool = False
    timed_out: bool = False
    warnings: list[str] = field(default_factory=list)
    started_at: float = 0.0  # unix time of the level's first request
    requests: list[dict] | None = None  # per-request records with --save-requests

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["requests"] is None:
            del d["requests"]
        return d


def _errors(records: list[RequestRecord], k: int = 5) -> list[dict]:
    c = Counter((r.error or "unknown")[:200] for r in records)
    return [{"error": e, "count": n} for e, n in c.most_common(k)]


def _steady(ok: list[RequestRecord], sent: list[RequestRecord], concurrency: int | None, closed_loop: bool, t_origin: float) -> dict | None:
    if not ok or not all(r.chunk_times for r in ok):
        return None  # no streaming: no token arrival times
    by_send = sorted(sent, key=lambda r: r.sent)

    def first_token_or_end(r: RequestRecord) -> float:
        return r.chunk_times[0] if r.ok and r.chunk_times else r.end

    if closed_loop:
        c = concurrency or 1
        if len(by_send) <= c:
            return None
        t0 = max(first_token_or_end(r) for r in by_send[:c])
        last_send = by_send[-1].sent
        t1 = min(r.end for r in by_send if r.end > last_send)
    else:
        t0 = min(first_token_or_end(r) for r in by_send)
        t1 = by_send[-1].sent
    if t1 <= t0:
        return None
    out = 0.0
    inp = 0
    for r in ok:
        t = np.frombuffer(r.chunk_times, dtype=np.float64)
        inside = int(np.count_nonzero((t >= t0) & (t <= t1)))
        out += r.output_tokens * inside / len(t)
        if t0 <= t[0] <= t1:
            inp += r.prompt_tokens or r.input_len or 0
    dur = t1 - t0
    return {
        "start_s": t0 - t_origin,
        "end_s": t1 - t_origin,
        "duration_s": dur,
        "output_throughput": out / dur,
        "total_throughput": (out + inp) / dur,
    }


def _meets(r: RequestRecord, slo: SLO) -> bool:
    checks = ((slo.ttft, r.ttft), (slo.tpot, r.tpot), (slo.e2e, r.e2e))
    return all(bound is None or (value is not None and value <= bound) for bound, value in checks)


def summarize(
    records: list[RequestRecord],
    *,
    concurrency: int | None,
    request_rate: float | None,
    num_prompts: int,
    slo: SLO | None = None,
    client_count_source: str = "chunks",
    save_requests: bool = False,
) -> LevelResult:
    res = LevelResult(concurrency=concurrency, request_rate=request_rate, num_prompts=num_prompts)
    cancelled = [r for r in records if not r.ok and r.error == "cancelled"]
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok and r.error != "cancelled"]
    res.completed, res.failed, res.unfinished = len(ok), len(failed), len(cancelled)
    res.errors = _errors(failed)
    sent = [r for r in records if r.sent > 0]
    if not sent:
        return res
    t_origin = min(r.sent for r in sent)
    t_end = max(r.end for r in sent)
    res.duration_s = dur = max(t_end - t_origin, 1e-9)
    res.input_tokens = sum(r.prompt_tokens or r.input_len or 0 for r in ok)
    res.output_tokens = sum(r.output_tokens for r in ok)
    res.output_throughput = res.output_tokens / dur
    res.total_throughput = (res.input_tokens + res.output_tokens) / dur
    res.request_throughput = len(ok) / dur
    res.steady = _steady(ok, sent, concurrency, request_rate is None, t_origin)
    res.ttft_ms = Stats.of((r.ttft for r in ok), 1e3)
    res.tpot_ms = Stats.of((r.tpot for r in ok), 1e3)
    res.e2e_ms = Stats.of((r.e2e for r in ok), 1e3)
    itls = [np.diff(np.frombuffer(r.chunk_times, dtype=np.float64)) for r in ok if len(r.chunk_times) > 1]
    res.itl_ms = Stats.of(np.concatenate(itls) if itls else [], 1e3)
    if slo is not None:
        good = sum(1 for r in ok if _meets(r, slo))
        res.goodput = {
            "slo": slo.as_dict(),
            "good_requests": good,
            "request_goodput": good / dur,
            "attainment": good / max(1, len(ok) + len(failed)),
        }
    # token counts: the server's usage is the truth; the client's own count cross-checks it
    with_usage = [r for r in ok if r.completion_tokens is not None and r.client_tokens is not None]
    usage_sum = sum(r.completion_tokens for r in with_usage)
    client_sum = sum(r.client_tokens for r in with_usage)
    mismatch = abs(usage_sum - client_sum) / usage_sum if usage_sum else None
    res.token_check = {
        "source": "usage" if len(with_usage) == len(ok) else ("client" if not with_usage else "mixed"),
        "client_count": client_count_source,
        "usage_tokens": usage_sum,
        "client_tokens": client_sum,
        "mismatch": mismatch,
        "requests_without_usage": len(ok) - sum(1 for r in ok if r.completion_tokens is not None),
    }
    if mismatch is not None and mismatch > TOKEN_MISMATCH_WARN:
        res.warnings.append(
            f"server usage counts {usage_sum} output tokens, the client counted {client_sum} "
            f"({client_count_source}); they differ by {mismatch:.1%}"
        )
    if res.token_check["requests_without_usage"]:
        res.warnings.append(
            f"{res.token_check['requests_without_usage']} requests came without usage; the client's count was used"
        )
    checked = [r for r in ok if r.input_len is not None and r.prompt_tokens is not None]
    off = [r for r in checked if r.prompt_tokens != r.input_len]
    res.input_check = {"checked": len(checked), "mismatched": len(off)}
    if off:
        res.warnings.append(f"{len(off)} of {len(checked)} prompts had a server-reported length other than intended")
    if save_requests:
        res.requests = [request_row(r, t_origin) for r in sorted(records, key=lambda r: r.sent)]
    return res


def request_row(r: RequestRecord, t_origin: float) -> dict:
    def ms(v):
        return None if v is None else v * 1e3

    return {
        "index": r.index,
        "url": r.url,
        "ok": r.ok,
        "error": r.error,
        "status": r.status,
        "sent_s": r.sent - t_origin,
        "end_s": r.end - t_origin,
        "input_len": r.input_len,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "client_tokens": r.client_tokens,
        "chunks": len(r.chunk_times),
        "finish_reason": r.finish_reason,
        "ttft_ms": ms(r.ttft),
        "tpot_ms": ms(r.tpot),
        "e2e_ms": ms(r.e2e),
    }
