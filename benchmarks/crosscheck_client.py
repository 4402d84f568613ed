"""Cross-check `tenk bench` against independent clients from PyPI (NVIDIA's aiperf, vLLM's
guidellm) on the same tenk server and the same workload; writes
benchmarks/results/crosscheck_<clients>_<host>.json.

    python -m venv /tmp/aiperf-venv && /tmp/aiperf-venv/bin/pip install aiperf==0.13.0
    python benchmarks/crosscheck_client.py --aiperf /tmp/aiperf-venv/bin/aiperf    # ~25 min on 2 cores
    pip install --target /tmp/gl guidellm==0.8.1    # or the wheels in .whl (see below)
    PYTHONPATH=/tmp/gl:src python benchmarks/crosscheck_client.py --clients tenk,guidellm
    python benchmarks/crosscheck_client.py --url http://127.0.0.1:8000 --clients tenk,guidellm ...
    python benchmarks/crosscheck_client.py --resummarize FILE.json                  # redo the tables

aiperf lives in its own venv: it pins pyzmq, rich and prometheus_client below what tenk uses, and
it only talks HTTP to the server. guidellm's dependencies are few enough to carry as wheels to a
machine without network (.whl/, installed with `pip install --no-index --no-deps --target`), and
it runs from `--guidellm` (default: this Python with `-m guidellm`, PYTHONPATH from the
environment).

With `--url` the script uses an already running tenk server (a GPU model, say) instead of
starting its tiny CPU one: the served model name and tokenizer directory come from its
/v1/models (`--model-dir` overrides the tokenizer), `--api-key` is its key, and its process is
found by the port it listens on, for the CPU accounting. Start it without prefix caching.

With `--same-prompts` tenk bench and guidellm read one JSONL of prompts per run (tenk bench's
exact-length random text, written by this script) instead of making their own. On a
random-weight MoE the prompt tokens steer the routing, so different prompts make a different
server: guidellm's English prompts decoded 22% faster than tenk's random text at c=64 on an H100
(TPOT 9.3 against 11.9 ms), which no client definition explains.

The same for every client: one `tenk serve` (tiny-moe random checkpoint, CPU, fp32, fixed KV
pool, prefix caching off so a repeated prompt cannot be cheaper), /v1/completions streamed with
usage, `ignore_eos`, temperature 0, prompts of exactly `input_len` tokens as the server counts
them, `max_tokens = output_len`, then `num_prompts` requests in a closed loop of `c` slots. Right
before each run this script sends `warmup` short requests itself (the clients send none), so the
server's counter deltas cover exactly the measured requests; `workload_ok` in each run checks
them (prompt and generation tokens, request count) and each client's own token and prompt counts.
Output tokens come from the server's `usage` for both (aiperf: --use-server-token-count; without
it aiperf re-tokenizes the output text, which on a random-weight model overcounts by ~57%: the
`aiperf-clientcount` client). Runs alternate between clients, in a rotated order each round, and
each starts when other processes leave the machine alone (up to --quiet-wait s).

Definitions (aiperf 0.13.0 metrics/types/*.py; tenk bench/metrics.py):
- output tok/s = usage completion tokens of the measured requests / (last response - first
  request start). aiperf ends at the last content chunk, tenk at the end of the stream; here
  both arrive in the same read.
- TTFT = first SSE read holding non-empty text - request start (perf counter taken right before
  the POST is handed to aiohttp); mean over successful requests.
- TPOT = (end of stream - first token) / (output tokens - 1), per request, mean over requests
  (vLLM's definition; aiperf and guidellm call it inter-token latency). Not in the tolerance.
guidellm 0.8.1 (benchmark/schemas/metrics.py, schemas/base/request_stats.py): profile
`synchronous` for c = 1 and `concurrent,streams=c` otherwise, `max_requests` = num_prompts, no
warmup or cooldown, `synthetic_text` prompts of input_len tokens by the same tokenizer, which
also makes it send `max_tokens = output_len, ignore_eos`; tokens from `usage`; wall-clock times.
- output tok/s = `output_tokens_per_second.successful.mean`: a duration-weighted mean of
  per-event rates over [first request start, last request end], i.e. tokens / that span.
- TTFT = first SSE line with text - request start, which guidellm takes when httpx starts
  writing the request headers (a pooled connection is already open), not before the POST call.
- TPOT = its `inter_token_latency_ms` (last token - first token) / (tokens - 1).
References besides the clients:
- the server's /metrics: token deltas, and its TTFT / E2E histograms (HTTP arrival -> first
  token / finish, in the API process: what the server spent, without the HTTP round trip).
- `raw`: a minimal client (blocking http.client, one thread per slot, no event loop).

Pinning (default on): the server runs on the upper half of the cores, this script and the
clients on the lower half. Without it, on 2 cores a client's own CPU use decides how fast the
server runs (aiperf's processes use about a core), and the clients would not measure the same
server. Even pinned, a shared VM's server speed moves by tens of percent between consecutive runs,
so summarize() also reports each client's numbers adjusted to the level's mean server speed
(from the server's histograms of the same requests); see its docstring.

aiperf variants: `aiperf` is plain `--concurrency c`, whose timing manager polls for a free slot
without sleeping (a busy loop); `aiperf-paced` adds `--request-rate R --arrival-pattern constant`
(R = 2000/s: a freed slot waits at most 0.5 ms for the next poll, which sleeps in between).
Per run, `refill_gap_ms` (how long a slot stays empty between requests) and
`effective_concurrency` (mean requests in flight) show how much load each client really offered.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

COUNTERS = {
    "gen": "vllm:generation_tokens_total",
    "prompt": "vllm:prompt_tokens_total",
    "ttft_sum": "vllm:time_to_first_token_seconds_sum",
    "ttft_n": "vllm:time_to_first_token_seconds_count",
    "e2e_sum": "vllm:e2e_request_latency_seconds_sum",
    "e2e_n": "vllm:e2e_request_latency_seconds_count",
    "prefix_hits": "vllm:prefix_cache_hits_total",
}
WARMUP_TOKENS = 16


@dataclass
class CrossCheckConfig:
    concurrency: tuple[int, ...] = (1, 4, 16)
    num_prompts: tuple[int, ...] = (32, 96, 256)  # per level: ~3-5 s each on the 2-core machine
    input_len: int = 64
    output_len: int = 64
    warmup: int = 4
    rounds: int = 5  # the server's speed on a shared VM moves run to run; more rounds average it
    clients: tuple[str, ...] = ("tenk", "aiperf", "aiperf-paced", "raw")
    paced_rate: float = 2000.0
    aiperf: str = "/tmp/aiperf-venv/bin/aiperf"
    guidellm: str = "python -m guidellm"  # a command line; "python" is this interpreter
    model_dir: str | None = None  # tokenizer dir; None: a fresh tiny-moe random checkpoint (or --url's root)
    url: str | None = None  # an already running tenk server; None: start the tiny one
    api_key: str = "crosscheck-key"  # stray requests from other processes on a shared machine get 401
    served_model: str = "tiny"  # with --url: the server's first model
    num_kv_blocks: int = 2048
    pin: bool = True
    quiet_wait_s: float = 30.0  # before each run, wait up to this long for other processes to calm down
    quiet_cores: float = 0.3  # "calm": they use less than this many cores' worth over 2 s
    tolerance: float = 0.05
    # tenk and guidellm read one JSONL of prompts per run instead of making their own: on a
    # random-weight MoE the prompts' tokens steer routing, and so the server's speed
    same_prompts: bool = False

    def __post_init__(self) -> None:
        if len(self.num_prompts) != len(self.concurrency):
            raise SystemExit("--num-prompts needs one value per --concurrency level")
        unknown = set(self.clients) - {"tenk", "aiperf", "aiperf-paced", "aiperf-clientcount", "guidellm", "raw"}
        if unknown or "tenk" not in self.clients:
            raise SystemExit(f"--clients must include tenk; unknown: {sorted(unknown)}")
        if self.same_prompts and set(self.clients) - {"tenk", "guidellm"}:
            raise SystemExit("--same-prompts works with the tenk and guidellm clients only")


# --------------------------------------------------------------------------- server and counters


_ALL_CORES = sorted(os.sched_getaffinity(0))  # taken at import, before main() pins this process


def core_split() -> tuple[set[int], set[int]]:
    """(client cores, server cores): the lower and upper half of the cores we started with."""
    half = max(1, len(_ALL_CORES) // 2)
    return set(_ALL_CORES[:half]), set(_ALL_CORES[half:]) or set(_ALL_CORES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cfg: CrossCheckConfig, model_dir: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "tenk.cli.main", "serve", model_dir, "--port", str(port), "--device", "cpu",
        "--dtype", "float32", "--max-model-len", "256", "--num-kv-blocks", str(cfg.num_kv_blocks),
        "--max-num-seqs", "256", "--served-model-name", cfg.served_model, "--no-enable-prefix-caching",
    ]  # fmt: skip
    # one torch thread: the tiny model's matmuls are too small to split (tests/server/conftest.py)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TENK_API_KEY": cfg.api_key}
    mine = os.sched_getaffinity(0)
    if cfg.pin:  # the server and its engine process inherit the server cores from us at fork
        os.sched_setaffinity(0, core_split()[1])
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    finally:
        os.sched_setaffinity(0, mine)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tenk serve exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {cfg.api_key}"}, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"tenk serve did not come up within 120 s; see {log_path}")


def counters(url: str) -> dict[str, float]:
    out = dict.fromkeys(COUNTERS, 0.0)
    names = {v: k for k, v in COUNTERS.items()}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            out[names[name]] += float(line.rsplit(" ", 1)[1])
    return out


def tree_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a live process and its live descendants (Linux /proc)."""
    total, stack, tick = 0.0, [pid], os.sysconf("SC_CLK_TCK")
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue  # exited meanwhile
    return total


def warm_up(cfg: CrossCheckConfig, url: str) -> None:
    """n requests at once, sent by this script right before each measured run (the clients send
    none), so that the server's counter deltas cover exactly the measured requests."""
    body = {"model": cfg.served_model, "prompt": "warm " * cfg.input_len, "max_tokens": WARMUP_TOKENS, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {cfg.api_key}"}

    def one() -> None:
        httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=120).raise_for_status()

    threads = [threading.Thread(target=one) for _ in range(cfg.warmup)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped descendants: the clients, not the server
    return r.ru_utime + r.ru_stime


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process), from /proc/stat.
    Minus the server's and the client's share, it tells how much else ran during a run."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(cfg: CrossCheckConfig) -> float:
    """On a shared machine, start a run when other processes leave the cores alone (the server
    is idle between runs, so whatever is busy is someone else). Returns the waited seconds."""
    t0 = time.monotonic()
    while True:
        b0 = machine_busy_s()
        time.sleep(2.0)
        if (machine_busy_s() - b0) / 2.0 < cfg.quiet_cores or time.monotonic() - t0 > cfg.quiet_wait_s:
            return time.monotonic() - t0


# --------------------------------------------------------------------------- per-request measures


def refill_gap_ms(spans: list[tuple[float, float]], c: int) -> float | None:
    """Mean time a closed-loop slot stays empty: for each request after the first c (by start),
    its start minus the latest end before it. A client's per-request overhead shows up here."""
    spans = sorted(spans)
    gaps, ends = [], []
    for i, (start, end) in enumerate(spans):
        before = [e for e in ends if e <= start]
        if i >= c and before:
            gaps.append(start - max(before))
        ends.append(end)
    return 1e3 * statistics.fmean(gaps) if gaps else None


def effective_concurrency(spans: list[tuple[float, float]]) -> float | None:
    """Mean requests in flight over the run (Little's law): sum of latencies / run time."""
    if not spans:
        return None
    dur = max(e for _, e in spans) - min(s for s, _ in spans)
    return sum(e - s for s, e in spans) / dur if dur > 0 else None


# --------------------------------------------------------------------------- clients


def shared_prompts(cfg: CrossCheckConfig, model_dir: str, n: int, seed: int, work: Path) -> Path:
    """--same-prompts: n prompts of exactly input_len tokens (tenk bench's random text prompts, by
    the server's tokenizer), one JSONL line each in the columns both clients read: tenk bench's
    "prompt" / "max_tokens", guidellm's "prompt" / "prompt_tokens_count" / "output_tokens_count"
    (which makes it send max_tokens and ignore_eos). Made once per (n, seed)."""
    import asyncio
    import random as _random

    from tenk.bench import BenchConfig
    from tenk.bench.dataset import clean_id_pool, random_prompts
    from tenk.bench.token_count import LocalTokenizer

    path = work / f"prompts-n{n}-s{seed}.jsonl"
    if path.exists():
        return path
    counter = LocalTokenizer(model_dir)
    bc = BenchConfig(urls=["http://127.0.0.1:1"], input_len=str(cfg.input_len), output_len=str(cfg.output_len), seed=seed)
    pool = clean_id_pool(counter, _random.Random(seed))
    prompts, stats = asyncio.run(random_prompts(bc, n, seed, counter, pool))
    if stats.inexact:
        raise RuntimeError(f"{stats.inexact} of {n} prompts could not be made exactly {cfg.input_len} tokens")
    rows = [{"prompt": p.prompt, "max_tokens": cfg.output_len, "prompt_tokens_count": cfg.input_len,
             "output_tokens_count": cfg.output_len} for p in prompts]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_tenk(cfg: CrossCheckConfig, url: str, model_dir: str, c: int, n: int, seed: int, work: Path) -> dict:
    out = work / f"tenk-c{c}-s{seed}.json"
    data = (["--dataset", "jsonl", "--dataset-path", str(shared_prompts(cfg, model_dir, n, seed, work))]
            if cfg.same_prompts else ["--tokenizer", model_dir])  # fmt: skip
    cmd = [
        sys.executable, "-m", "tenk.cli.main", "bench", "--url", url, "--model", cfg.served_model, "--api-key", cfg.api_key,
        "--input-len", str(cfg.input_len), "--output-len", str(cfg.output_len), "-c", str(c), "-n", str(n),
        "--warmup", "0", "--workers", "1", "--seed", str(seed), *data,
        "--no-metrics", "--save-requests", "-q", "-o", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"tenk bench failed ({proc.returncode}): {proc.stderr[-2000:]}")
    doc = json.loads(out.read_text())
    lv = doc["levels"][0]
    spans = [(r["sent_s"], r["end_s"]) for r in lv["requests"] if r["ok"]]
    return {
        "output_tok_s": lv["output_throughput"],
        "ttft_mean_ms": lv["ttft_ms"]["mean"],
        "ttft_p50_ms": lv["ttft_ms"]["p50"],
        "tpot_mean_ms": lv["tpot_ms"]["mean"],
        "e2e_mean_ms": lv["e2e_ms"]["mean"],
        "duration_s": lv["duration_s"],
        "output_tokens": lv["output_tokens"],
        "completed": lv["completed"],
        "failed": lv["failed"],
        "prompt_tokens_each": sorted({r["prompt_tokens"] for r in lv["requests"] if r["ok"]}),
        "steady_output_tok_s": (lv["steady"] or {}).get("output_throughput"),
        "refill_gap_ms": refill_gap_ms(spans, c),
        "effective_concurrency": effective_concurrency(spans),
    }


def aiperf_cmd(cfg: CrossCheckConfig, client: str, url: str, model_dir: str, c: int, n: int, seed: int, art: Path) -> list[str]:
    cmd = [
        cfg.aiperf, "profile", "--model", cfg.served_model, "--url", url, "--api-key", cfg.api_key,
        "--endpoint-type", "completions", "--streaming", "--tokenizer", model_dir,
        "--use-legacy-max-tokens",  # tenk's /v1/completions reads max_tokens (max_completion_tokens is chat's)
        "--extra-inputs", json.dumps({"ignore_eos": True, "temperature": 0.0}),
        "--prompt-input-tokens-mean", str(cfg.input_len), "--prompt-input-tokens-stddev", "0",
        "--prompt-output-tokens-mean", str(cfg.output_len), "--prompt-output-tokens-stddev", "0",
        "--concurrency", str(c), "--request-count", str(n), "--num-dataset-entries", str(n),
        "--random-seed", str(seed),
        "--ui-type", "none", "--output-artifact-dir", str(art), "--no-server-metrics", "--no-gpu-telemetry",
    ]  # fmt: skip
    if client != "aiperf-clientcount":
        cmd.append("--use-server-token-count")  # usage counts, as tenk; otherwise aiperf re-tokenizes the text
    if client == "aiperf-paced":
        cmd += ["--request-rate", str(cfg.paced_rate), "--arrival-pattern", "constant"]
    return cmd


def run_aiperf(cfg: CrossCheckConfig, client: str, url: str, model_dir: str, c: int, n: int, seed: int, work: Path) -> dict:
    art = work / f"{client}-c{c}-s{seed}"
    cmd = aiperf_cmd(cfg, client, url, model_dir, c, n, seed, art)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    summary = art / "profile_export_aiperf.json"
    if proc.returncode != 0 or not summary.exists():
        raise RuntimeError(f"aiperf failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    d = json.loads(summary.read_text())
    body = json.loads((art / "inputs.json").read_text())["data"][0]["payloads"][0]  # what it sent
    records = [json.loads(x) for x in (art / "profile_export.jsonl").read_text().splitlines() if x.strip()]
    measured = [r for r in records if r["metadata"].get("benchmark_phase") == "profiling"]
    errors = sum(1 for r in measured if r.get("error"))
    spans = [(r["metadata"]["request_start_ns"] / 1e9, r["metadata"]["request_end_ns"] / 1e9) for r in measured]
    shutil.rmtree(art, ignore_errors=True)

    def val(key: str, stat: str = "avg"):
        return (d.get(key) or {}).get(stat)

    return {
        "output_tok_s": val("output_token_throughput"),
        "ttft_mean_ms": val("time_to_first_token"),
        "ttft_p50_ms": val("time_to_first_token", "p50"),
        "tpot_mean_ms": val("inter_token_latency"),
        "e2e_mean_ms": val("request_latency"),
        "duration_s": val("benchmark_duration"),
        "output_tokens": val("total_output_tokens") or val("output_sequence_length", "sum"),
        "completed": len(measured) - errors,
        "failed": errors,
        "prompt_tokens_each": sorted({r["metrics"].get("usage_prompt_tokens", {}).get("value", -1) for r in measured}),
        "refill_gap_ms": refill_gap_ms(spans, c),
        "effective_concurrency": effective_concurrency(spans),
        "request_body": {k: v for k, v in body.items() if k != "prompt"},
    }


def guidellm_exe(cfg: CrossCheckConfig) -> list[str]:
    exe = shlex.split(cfg.guidellm)
    if exe and exe[0] in ("python", "python3"):
        exe[0] = sys.executable
    return exe


def guidellm_cmd(cfg: CrossCheckConfig, url: str, model_dir: str, c: int, n: int, seed: int, out: Path) -> list[str]:
    backend = {
        "kind": "openai_http", "target": url, "model": cfg.served_model, "api_key": cfg.api_key,
        "request_format": "/v1/completions", "stream": True,
        "http2": False,  # plain http: httpx would speak HTTP/1.1 anyway; this keeps h2 out of the path
        "extras": {"body": {"temperature": 0.0}},
    }  # fmt: skip
    # synthetic_text with output_tokens makes guidellm send max_tokens = output_len and ignore_eos
    data = {"kind": "synthetic_text", "prompt_tokens": cfg.input_len, "output_tokens": cfg.output_len}
    if cfg.same_prompts:
        data = {"kind": "json_file", "path": str(shared_prompts(cfg, model_dir, n, seed, out.parent))}
    data_arg = json.dumps(data)
    profile = {"kind": "synchronous"} if c == 1 else {"kind": "concurrent", "streams": c}
    return guidellm_exe(cfg) + [
        "run", "--backend", json.dumps(backend), "--profile", json.dumps(profile),
        "--constraint", json.dumps({"kind": "max_requests", "count": n}),
        "--data", data_arg, "--tokenizer", json.dumps({"kind": "huggingface_auto", "model": model_dir}),
        "--seed", json.dumps({"kind": "static", "value": seed}),
        "--output", json.dumps({"kind": "json", "path": str(out)}), "--disable-console-interactive",
    ]  # fmt: skip


def run_guidellm(cfg: CrossCheckConfig, url: str, model_dir: str, c: int, n: int, seed: int, work: Path) -> dict:
    out = work / f"guidellm-c{c}-s{seed}.json"
    cmd = guidellm_cmd(cfg, url, model_dir, c, n, seed, out)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"guidellm failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    b = json.loads(out.read_text())["benchmarks"][0]
    out.unlink()
    m, reqs = b["metrics"], b["requests"]
    ok = reqs["successful"]
    spans = [(r["request_start_time"], r["request_end_time"]) for r in ok]

    def mean(key: str):
        return (m.get(key) or {}).get("successful", {}).get("mean")

    return {
        "output_tok_s": mean("output_tokens_per_second"),
        "ttft_mean_ms": mean("time_to_first_token_ms"),
        "ttft_p50_ms": m["time_to_first_token_ms"]["successful"]["median"],
        "tpot_mean_ms": mean("inter_token_latency_ms"),
        "e2e_mean_ms": 1e3 * mean("request_latency"),
        "duration_s": b["duration"],
        "output_tokens": sum(r["output_tokens"] or 0 for r in ok),
        "completed": len(ok),
        "failed": len(reqs["errored"]) + len(reqs["incomplete"]),
        "prompt_tokens_each": sorted({r["prompt_tokens"] for r in ok}),
        "refill_gap_ms": refill_gap_ms(spans, c),
        "effective_concurrency": effective_concurrency(spans),
        "request_body": {k: v for k, v in json.loads(ok[0]["request_args"])["body"].items() if k != "prompt"} if ok else None,
        "guidellm_warnings": [w["message"] for w in b.get("warnings") or []],
    }


def run_raw(cfg: CrossCheckConfig, url: str, model_dir: str, c: int, n: int, seed: int, work: Path) -> dict:
    out = work / f"raw-c{c}-s{seed}.json"
    job = {"url": url, "model_dir": model_dir, "c": c, "n": n, "seed": seed, "out": str(out),
           "input_len": cfg.input_len, "output_len": cfg.output_len, "model": cfg.served_model, "api_key": cfg.api_key}  # fmt: skip
    cmd = [sys.executable, __file__, "--raw-child", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"raw client failed ({proc.returncode}): {proc.stderr[-2000:]}")
    recs = json.loads(out.read_text())
    ok = [r for r in recs if r["ok"]]
    spans = [(r["start"], r["end"]) for r in ok]
    dur = max(r["end"] for r in recs) - min(r["start"] for r in recs)
    tokens = sum(r["completion_tokens"] for r in ok)
    return {
        "output_tok_s": tokens / dur,
        "ttft_mean_ms": 1e3 * statistics.fmean(r["first"] - r["start"] for r in ok),
        "ttft_p50_ms": 1e3 * statistics.median(r["first"] - r["start"] for r in ok),
        "tpot_mean_ms": _mean(1e3 * (r["end"] - r["first"]) / (r["completion_tokens"] - 1) for r in ok if r["completion_tokens"] > 1),
        "e2e_mean_ms": 1e3 * statistics.fmean(r["end"] - r["start"] for r in ok),
        "duration_s": dur,
        "output_tokens": tokens,
        "completed": len(ok),
        "failed": len(recs) - len(ok),
        "prompt_tokens_each": sorted({r["prompt_tokens"] for r in ok}),
        "refill_gap_ms": refill_gap_ms(spans, c),
        "effective_concurrency": effective_concurrency(spans),
    }


def raw_child(job: dict) -> None:
    """The `raw` client: prompts from tenk's exact-length builder, sent from one thread per slot
    over blocking http.client; times are taken right after the socket read returns."""
    import asyncio
    import http.client
    import random

    from tenk.bench.config import BenchConfig
    from tenk.bench.dataset import clean_id_pool, random_prompts
    from tenk.bench.token_count import LocalTokenizer

    bc = BenchConfig(urls=[job["url"]], input_len=job["input_len"], output_len=job["output_len"], tokenizer=job["model_dir"])
    tok = LocalTokenizer(job["model_dir"])
    pool = clean_id_pool(tok, random.Random(job["seed"]))
    prompts, _ = asyncio.run(random_prompts(bc, job["n"], job["seed"], tok, pool))
    host, port = job["url"].removeprefix("http://").split(":")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {job['api_key']}"}

    def send(conn: http.client.HTTPConnection, prompt: str, max_tokens: int) -> dict:
        body = json.dumps({"model": job["model"], "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                           "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
        rec = {"ok": False, "start": time.perf_counter(), "first": None}
        conn.request("POST", "/v1/completions", body=body, headers=headers)
        resp = conn.getresponse()
        buf = b""
        while chunk := resp.read1(65536):
            now = time.perf_counter()
            buf += chunk
            *events, buf = buf.split(b"\n\n")
            for ev in events:
                data = ev.removeprefix(b"data: ").strip()
                if not data or data == b"[DONE]":
                    rec["ok"] = rec["ok"] or data == b"[DONE]"
                    continue
                obj = json.loads(data)
                if rec["first"] is None and obj.get("choices") and obj["choices"][0].get("text"):
                    rec["first"] = now
                if obj.get("usage"):
                    rec["completion_tokens"] = obj["usage"]["completion_tokens"]
                    rec["prompt_tokens"] = obj["usage"]["prompt_tokens"]
        rec["end"] = time.perf_counter()
        rec["ok"] = rec["ok"] and resp.status == 200 and rec["first"] is not None
        return rec

    def closed_loop(items: list[tuple[str, int]], slots: int) -> list[dict]:
        lock, recs, it = threading.Lock(), [], iter(items)

        def slot() -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=600)
            while True:
                with lock:
                    item = next(it, None)
                if item is None:
                    break
                r = send(conn, *item)
                with lock:
                    recs.append(r)
            conn.close()

        threads = [threading.Thread(target=slot) for _ in range(slots)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return recs

    recs = closed_loop([(p.prompt, job["output_len"]) for p in prompts], job["c"])
    Path(job["out"]).write_text(json.dumps(recs))


# --------------------------------------------------------------------------- orchestration


def one_run(cfg: CrossCheckConfig, client: str, url: str, server_pid: int | None, model_dir: str, c: int, n: int, seed: int, work: Path) -> dict:
    waited = wait_for_quiet(cfg) if cfg.quiet_wait_s > 0 else 0.0
    if cfg.warmup:
        warm_up(cfg, url)
    server_cpu = (lambda: tree_cpu_s(server_pid)) if server_pid else (lambda: 0.0)  # --url: its pid may be unknown
    before, cpu0, srv0, busy0 = counters(url), children_cpu_s(), server_cpu(), machine_busy_s()
    t0 = time.perf_counter()
    if client == "tenk":
        res = run_tenk(cfg, url, model_dir, c, n, seed, work)
    elif client == "raw":
        res = run_raw(cfg, url, model_dir, c, n, seed, work)
    elif client == "guidellm":
        res = run_guidellm(cfg, url, model_dir, c, n, seed, work)
    else:
        res = run_aiperf(cfg, client, url, model_dir, c, n, seed, work)
    wall = time.perf_counter() - t0
    client_cpu, srv_cpu = children_cpu_s() - cpu0, server_cpu() - srv0
    d = {k: v - before[k] for k, v in counters(url).items()}
    res.update(
        client=client, concurrency=c, num_prompts=n, seed=seed, wall_s=wall, waited_for_quiet_s=waited,
        client_cpu_s=client_cpu, server_cpu_s=srv_cpu if server_pid else None,
        # other users of the machine (with an unknown server pid: the server too)
        other_cpu_s=max(0.0, machine_busy_s() - busy0 - client_cpu - srv_cpu),
        server={
            "requests": int(d["e2e_n"]), "generation_tokens": int(d["gen"]), "prompt_tokens": int(d["prompt"]),
            "ttft_mean_ms": 1e3 * d["ttft_sum"] / max(1, d["ttft_n"]),
            "e2e_mean_ms": 1e3 * d["e2e_sum"] / max(1, d["e2e_n"]), "prefix_cache_hits": int(d["prefix_hits"]),
        },
    )  # fmt: skip
    # the workload really was the same: every prompt input_len tokens, every answer output_len
    # relative to the server's view of the same run, which takes out how fast the server happened to be
    res["ttft_over_server_ms"] = res["ttft_mean_ms"] - res["server"]["ttft_mean_ms"]
    res["server_rate_tok_s"] = c * cfg.output_len / (res["server"]["e2e_mean_ms"] / 1e3)  # c slots, no gaps
    res["slot_efficiency"] = res["output_tok_s"] / res["server_rate_tok_s"]
    res["workload_ok"] = (
        d["prompt"] == n * cfg.input_len
        and d["gen"] == n * cfg.output_len
        and int(d["e2e_n"]) == n
        and res["output_tokens"] == n * cfg.output_len
        and res["prompt_tokens_each"] == [cfg.input_len]
        and res["completed"] == n
        and res["failed"] == 0
    )
    return res


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def summarize(cfg: CrossCheckConfig, runs: list[dict]) -> list[dict]:
    """Per level and client: means over rounds, and ratios to tenk two ways.
    raw: the numbers as each client reported them. On a shared VM the server's own speed moves
    by tens of percent between consecutive runs, whoever the client is, so also:
    server-adjusted: each run's numbers moved to the level's average server speed, using the
    server's view of the same requests. TTFT: client TTFT - server TTFT + the level's mean server
    TTFT. tok/s: slot_efficiency (client tok/s / the rate the server's own E2E latencies allow
    with c full slots) x the level's mean such rate. What is left are the clients' differences."""
    levels = []
    for c in cfg.concurrency:
        at = [r for r in runs if r["concurrency"] == c]
        mean_srv_ttft = _mean(r["server"]["ttft_mean_ms"] for r in at)
        mean_srv_rate = _mean(r["server_rate_tok_s"] for r in at)
        per = {}
        for client in cfg.clients:
            rs = [r for r in at if r["client"] == client]
            if not rs:
                continue
            per[client] = {
                "runs": len(rs),
                "output_tok_s": _mean(r["output_tok_s"] for r in rs),
                "output_tok_s_each": [round(r["output_tok_s"], 1) for r in rs],
                "ttft_mean_ms": _mean(r["ttft_mean_ms"] for r in rs),
                "ttft_mean_ms_each": [round(r["ttft_mean_ms"], 2) for r in rs],
                "tpot_mean_ms": _mean(r.get("tpot_mean_ms") for r in rs),
                "adjusted_output_tok_s": _mean(r["slot_efficiency"] * mean_srv_rate for r in rs),
                "adjusted_ttft_mean_ms": _mean(r["ttft_over_server_ms"] + mean_srv_ttft for r in rs),
                "e2e_mean_ms": _mean(r["e2e_mean_ms"] for r in rs),
                "refill_gap_ms": _mean(r["refill_gap_ms"] for r in rs),
                "effective_concurrency": _mean(r["effective_concurrency"] for r in rs),
                "slot_efficiency": _mean(r["slot_efficiency"] for r in rs),
                "ttft_over_server_ms": _mean(r["ttft_over_server_ms"] for r in rs),
                "server_ttft_mean_ms": _mean(r["server"]["ttft_mean_ms"] for r in rs),
                "server_e2e_mean_ms": _mean(r["server"]["e2e_mean_ms"] for r in rs),
                "client_cpu_s_per_run": _mean(r["client_cpu_s"] for r in rs),
                "server_cpu_s_per_run": _mean(r["server_cpu_s"] for r in rs),
                "other_cpu_cores": _mean(r["other_cpu_s"] / r["wall_s"] for r in rs),  # other processes
                "workload_ok": all(r["workload_ok"] for r in rs),
            }
        ref = per.get("tenk")
        ratios = {}
        for client, p in per.items():
            if client == "tenk" or ref is None:  # a partial file, written while the runs go on
                continue
            raw = (p["output_tok_s"] / ref["output_tok_s"], p["ttft_mean_ms"] / ref["ttft_mean_ms"])
            adj = (p["adjusted_output_tok_s"] / ref["adjusted_output_tok_s"], p["adjusted_ttft_mean_ms"] / ref["adjusted_ttft_mean_ms"])
            ratios[client] = {
                "output_tok_s": raw[0],
                "ttft_mean": raw[1],
                "adjusted_output_tok_s": adj[0],
                "adjusted_ttft_mean": adj[1],
                "tpot_mean": p["tpot_mean_ms"] / ref["tpot_mean_ms"] if p["tpot_mean_ms"] and ref["tpot_mean_ms"] else None,
                # tok/s per request in flight: also takes out how fast each client refills a slot
                "adjusted_output_tok_s_per_request_in_flight": adj[0] * ref["effective_concurrency"] / p["effective_concurrency"],
                "raw_within_tolerance": all(abs(x - 1) <= cfg.tolerance for x in raw),
                "adjusted_within_tolerance": all(abs(x - 1) <= cfg.tolerance for x in adj),
            }
        levels.append({"concurrency": c, "mean_server_ttft_ms": mean_srv_ttft, "mean_server_rate_tok_s": mean_srv_rate,
                       "clients": per, "ratio_to_tenk": ratios})  # fmt: skip
    return levels


def print_summary(doc: dict) -> None:
    tol = doc["config"]["tolerance"]

    def tpot(x: dict) -> str:
        return f"TPOT {x['tpot_mean_ms']:6.2f} ms" if x.get("tpot_mean_ms") is not None else "TPOT    n/a"

    for lv in doc["levels"]:
        t = lv["clients"].get("tenk")
        if t is None:
            continue
        print(f"c={lv['concurrency']:3d} tenk          tok/s {t['output_tok_s']:7.1f} (adjusted {t['adjusted_output_tok_s']:7.1f})  "
              f"TTFT {t['ttft_mean_ms']:6.2f} ms (adjusted {t['adjusted_ttft_mean_ms']:6.2f})  {tpot(t)}")  # fmt: skip
        for client, r in lv["ratio_to_tenk"].items():
            x = lv["clients"][client]
            print(f"      {client:13s} tok/s {x['output_tok_s']:7.1f} (adjusted {x['adjusted_output_tok_s']:7.1f})  "
                  f"TTFT {x['ttft_mean_ms']:6.2f} ms (adjusted {x['adjusted_ttft_mean_ms']:6.2f})  {tpot(x)}  ratio to tenk: "
                  f"tok/s {r['output_tok_s']:.3f} / adjusted {r['adjusted_output_tok_s']:.3f}, "
                  f"TTFT {r['ttft_mean']:.3f} / adjusted {r['adjusted_ttft_mean']:.3f}"
                  + (f", TPOT {r['tpot_mean']:.3f}" if r.get("tpot_mean") else "")
                  + f"  raw {'within' if r['raw_within_tolerance'] else 'outside'} {tol:.0%}, "
                  f"adjusted {'within' if r['adjusted_within_tolerance'] else 'outside'}")  # fmt: skip


def listening_pid(url: str) -> int | None:
    """The process that listens on the url's port on this machine (Linux /proc), climbing to the
    outermost `tenk serve` ancestor so that tree_cpu_s also counts its engine processes; None if
    no process here listens there (a server on another machine)."""
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{f[9]}]")
        except OSError:
            continue
    holders = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if any(os.readlink(fd) in inodes for fd in (d / "fd").iterdir()):
                    holders.add(int(d.name))
            except OSError:
                continue
    if not holders:
        return None

    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    def is_tenk_serve(pid: int) -> bool:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return b"serve" in argv and any(a.endswith(b"tenk") or a == b"tenk.cli.main" for a in argv)

    pid = min(holders)
    try:
        while (pp := parent(pid)) > 1 and is_tenk_serve(pp):
            pid = pp
    except OSError:
        pass
    return pid


def attach_server(cfg: CrossCheckConfig) -> tuple[str, str]:
    """--url: (served model name, tokenizer dir) from the running server's /v1/models."""
    headers = {"Authorization": f"Bearer {cfg.api_key}"}
    models = httpx.get(cfg.url + "/v1/models", headers=headers, timeout=10).raise_for_status().json()["data"]
    if not models:
        raise SystemExit(f"{cfg.url} serves no model")
    tok = cfg.model_dir or models[0].get("root")
    if not tok or not Path(tok, "tokenizer_config.json").exists():
        raise SystemExit(f"no local tokenizer for {models[0]['id']} (root {tok!r}); pass --model-dir DIR")
    return models[0]["id"], tok


def client_versions(cfg: CrossCheckConfig) -> dict:
    out = {}
    if any(cl.startswith("aiperf") for cl in cfg.clients):
        out["aiperf"] = subprocess.run([cfg.aiperf, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    if "guidellm" in cfg.clients:
        proc = subprocess.run(guidellm_exe(cfg) + ["--version"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"`{cfg.guidellm} --version` failed; install guidellm (see the docstring) or pass --guidellm:\n{proc.stderr[-1500:]}")
        out["guidellm"] = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else None
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--raw-child":
        return raw_child(json.loads(sys.argv[2]))
    if len(sys.argv) == 3 and sys.argv[1] == "--resummarize":  # recompute "levels" of a written file
        doc = json.loads(Path(sys.argv[2]).read_text())
        cfg = CrossCheckConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc["config"].items() if k != "model_dir"})
        for r in doc["runs"]:  # files written before server_rate_tok_s was recorded
            r.setdefault("server_rate_tok_s", r["concurrency"] * cfg.output_len / (r["server"]["e2e_mean_ms"] / 1e3))
        doc["levels"] = summarize(cfg, doc["runs"])
        Path(sys.argv[2]).write_text(json.dumps(doc, indent=1) + "\n")
        return print_summary(doc)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--num-prompts", default="32,96,256")
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", default="tenk,aiperf,aiperf-paced,raw",
                    help="tenk (required), aiperf, aiperf-paced, aiperf-clientcount (aiperf counting output "
                         "tokens with its tokenizer instead of usage), guidellm, raw")  # fmt: skip
    ap.add_argument("--paced-rate", type=float, default=2000.0)
    ap.add_argument("--aiperf", default=shutil.which("aiperf") or "/tmp/aiperf-venv/bin/aiperf")
    ap.add_argument("--guidellm", default="python -m guidellm",
                    help='guidellm command line ("python": this interpreter; PYTHONPATH from the environment)')
    ap.add_argument("--url", default=None, help="an already running tenk server (default: start the tiny CPU one)")
    ap.add_argument("--api-key", default="crosscheck-key", help="the server's key (the started one gets this one)")
    ap.add_argument("--no-pin", action="store_true", help="let server and clients share every core")
    ap.add_argument("--quiet-wait", type=float, default=30.0, help="seconds to wait for a calm machine before each run (0: off)")
    ap.add_argument("--model-dir", default=None, help="tokenizer dir (default: a fresh tiny-moe, or --url's model root)")
    ap.add_argument("--same-prompts", action="store_true",
                    help="tenk and guidellm send the same prompts (a JSONL made per run) instead of their own")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cfg = CrossCheckConfig(
        concurrency=tuple(int(x) for x in a.concurrency.split(",")),
        num_prompts=tuple(int(x) for x in a.num_prompts.split(",")),
        input_len=a.input_len, output_len=a.output_len, warmup=a.warmup, rounds=a.rounds,
        clients=tuple(a.clients.split(",")), paced_rate=a.paced_rate, aiperf=a.aiperf, guidellm=a.guidellm,
        model_dir=a.model_dir, url=a.url.rstrip("/") if a.url else None, api_key=a.api_key,
        pin=not a.no_pin, quiet_wait_s=a.quiet_wait, same_prompts=a.same_prompts,
    )  # fmt: skip
    if any(cl.startswith("aiperf") for cl in cfg.clients) and not Path(cfg.aiperf).exists():
        raise SystemExit(f"aiperf not found at {cfg.aiperf}; install it (see the docstring) or pass --aiperf PATH")
    versions = client_versions(cfg)
    others = sorted({cl.split("-")[0] for cl in cfg.clients} - {"tenk", "raw"}) or ["raw"]
    out = Path(a.out or Path(__file__).parent / "results" / f"crosscheck_{'_'.join(others)}_{socket.gethostname()}.json")
    if cfg.pin:  # this script and every client it starts run on the client cores; the server is moved
        os.sched_setaffinity(0, core_split()[0])
    work = Path(tempfile.mkdtemp(prefix="tenk-crosscheck-"))
    server = None
    if cfg.url:  # the server is not ours: not moved, not stopped
        url = cfg.url
        cfg.served_model, model_dir = attach_server(cfg)
        server_pid = listening_pid(url)
    else:
        model_dir = cfg.model_dir
        if model_dir is None:
            model_dir = str(work / "tiny-moe")
            subprocess.run([sys.executable, "-m", "tenk.cli.main", "random-checkpoint", "tiny-moe", model_dir, "--dtype", "fp32", "--force"],
                           check=True, capture_output=True, timeout=300)  # fmt: skip
        server, url = start_server(cfg, model_dir, work / "server.log")
        server_pid = server.pid
    # recorded: pinning is easy to get wrong
    server_affinity = sorted(os.sched_getaffinity(server_pid)) if server_pid else None
    runs: list[dict] = []
    errors: list[dict] = []
    started = time.time()

    def write(final: bool) -> dict:
        """After every run, so that a run cut short (a device's time limit) still leaves its data."""
        doc = {
            "what": f"tenk bench vs {', '.join(others)} on one tenk server, same workload (benchmarks/crosscheck_client.py docstring)",
            "complete": final,
            "config": asdict(cfg) | {"model_dir": model_dir},
            "environment": {
                "host": socket.gethostname(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                **versions, "started_at": started, "wall_s": time.time() - started, "server_url": url,
                "client_cores": sorted(core_split()[0]) if cfg.pin else None,
                "server_cores": sorted(core_split()[1]) if cfg.pin and not cfg.url else None,
                "server_pid_found": server_pid is not None,
                "server_affinity": server_affinity, "client_affinity": sorted(os.sched_getaffinity(0)),
            },
            "levels": summarize(cfg, runs),
            "errors": errors,
            "runs": runs,
        }  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        return doc

    try:
        # a fresh engine's first steps are slow (allocations, first calls): warm it once at the
        # widest level so that the first measured run is not the odd one out
        run_tenk(cfg, url, model_dir, max(cfg.concurrency), 2 * max(cfg.concurrency), seed=999_999, work=work)
        for rnd in range(cfg.rounds):
            for li, (c, n) in enumerate(zip(cfg.concurrency, cfg.num_prompts)):
                k = len(cfg.clients)
                order = [cfg.clients[(rnd + li + j) % k] for j in range(k)]  # rotate who goes first
                for pos, client in enumerate(order):
                    try:
                        r = one_run(cfg, client, url, server_pid, model_dir, c, n, seed=1000 * rnd + c, work=work)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # one client's failure ends no one else's runs
                        errors.append({"client": client, "concurrency": c, "round": rnd, "error": str(exc)[-3000:]})
                        print(f"round {rnd} c={c:3d} {client:13s} FAILED: {str(exc)[-500:]}", flush=True)
                        continue
                    r.update(round=rnd, position=pos)  # summarize pairs runs by round
                    runs.append(r)
                    srv = f"{r['server_cpu_s']:4.1f} s" if r["server_cpu_s"] is not None else " n/a"
                    print(f"round {rnd} c={c:3d} {client:13s} {r['output_tok_s']:7.1f} tok/s  TTFT {r['ttft_mean_ms']:6.2f} ms "
                          f"(server {r['server']['ttft_mean_ms']:5.2f})  E2E {r['e2e_mean_ms']:6.1f}  gap {r['refill_gap_ms'] or 0:5.2f} ms  "
                          f"in flight {r['effective_concurrency']:5.2f}  slots used {r['slot_efficiency']:.3f}  cpu client {r['client_cpu_s']:4.1f} s "
                          f"server {srv} other {r['other_cpu_s'] / r['wall_s']:4.2f} cores  same workload: {r['workload_ok']}", flush=True)  # fmt: skip
                    write(final=False)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    doc = write(final=True)
    print_summary(doc)
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
