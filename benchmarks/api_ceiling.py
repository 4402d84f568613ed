"""How many streamed tokens per second (and requests per second) one tenk API process carries,
whatever the GPUs could: `tenk serve` with the synthetic engine (TENK_SYNTHETIC_ENGINE=STEP_MS,
src/tenk/server/synthetic_engine.py: every step takes STEP_MS and gives each running request a
token) swept by `tenk bench`, with the API process's CPU time per streamed token and per request.

    python benchmarks/api_ceiling.py --step-ms 20 --concurrency 256,1024 --dp 1 --out api_ceiling.json
    python benchmarks/api_ceiling.py --server-cores 8-15 --client-cores 0-7 --workers 4 ...   # 16 cores

At c sequences and STEP_MS per step the engines could stream c / STEP_MS tokens per second
(`engine_tok_s`); when the sweep measures less and the API process's CPU is near one core, that
process is the ceiling. With --dp N the server runs N synthetic replicas behind its one API
process, as `tenk serve --dp N` does with real ones; with --api-server-count K, behind K API
processes (their CPU is added up, with the parent's).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _cores(spec: str | None) -> set[int] | None:
    if not spec:
        return None
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _is_api_process(pid: int) -> bool:
    """An API process of --api-server-count (its parent sets this for them only)."""
    try:
        return b"PROMETHEUS_MULTIPROC_DIR=" in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-ms", type=float, default=20.0)
    ap.add_argument("--concurrency", default="64,256,1024")
    ap.add_argument("--prompts-per-concurrency", type=float, default=2.0)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--dp", type=int, default=1)
    ap.add_argument("--api-server-count", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--server-cores", default=None, help="e.g. 8-15: the API process and its engines")
    ap.add_argument("--client-cores", default=None, help="e.g. 0-7: tenk bench")
    ap.add_argument("--engine-cores", default=None, help="e.g. 14-15: the engine processes, once started "
                    "(default: the server's cores)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    port = _free_port()
    env = {**os.environ, "TENK_SYNTHETIC_ENGINE": str(args.step_ms), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    serve = [sys.executable, "-m", "tenk.cli.main", "serve", "tiny-moe", "--load-format", "dummy", "--device", "cpu",
             "--port", str(port), "--dp", str(args.dp), "--api-server-count", str(args.api_server_count), "--max-num-seqs", str(max(levels)),
             "--max-model-len", str(args.input_len + args.output_len + 16), "--no-enable-prefix-caching"]  # fmt: skip
    server_cores, client_cores, engine_cores = _cores(args.server_cores), _cores(args.client_cores), _cores(args.engine_cores)
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(serve, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=(lambda: os.sched_setaffinity(0, server_cores)) if server_cores else None)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    result: dict = {"benchmark": "api_ceiling", "step_ms": args.step_ms, "dp": args.dp,
                    "api_server_count": args.api_server_count, "workers": args.workers,
                    "input_len": args.input_len, "output_len": args.output_len, "cpu_count": os.cpu_count(),
                    "server_cores": args.server_cores, "client_cores": args.client_cores,
                    "engine_cores": args.engine_cores, "levels": []}  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                print(log.read()[-3000:], file=sys.stderr)
                return 1
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        api_pids = [proc.pid] + [c for c in _children(proc.pid) if _is_api_process(c)]
        if engine_cores:
            for child in _children(proc.pid):
                if child not in api_pids:
                    os.sched_setaffinity(child, engine_cores)
        for c in levels:
            n = max(int(c * args.prompts_per_concurrency), c)
            out = Path(tempfile.mkdtemp()) / "bench.json"
            bench = [sys.executable, "-m", "tenk.cli.main", "bench", "--url", url, "--model", "tiny-moe",
                     "--concurrency", str(c), "--num-prompts", str(n), "--input-len", str(args.input_len),
                     "--output-len", str(args.output_len), "--workers", str(args.workers), "--out", str(out)]  # fmt: skip
            before = sum(_cpu_s(p) for p in api_pids)
            b = subprocess.run(bench, env=env, capture_output=True, text=True,
                               preexec_fn=(lambda: os.sched_setaffinity(0, client_cores)) if client_cores else None)  # fmt: skip
            api_cpu = sum(_cpu_s(p) for p in api_pids) - before
            if b.returncode != 0:
                print(b.stdout[-2000:], b.stderr[-2000:], file=sys.stderr)
                return 1
            lv = json.loads(out.read_text())["levels"][0]
            row = {
                "concurrency": c, "num_prompts": n, "failed": lv["failed"], "duration_s": lv["duration_s"],
                "output_tok_s": lv["output_throughput"], "engine_tok_s": c / (args.step_ms / 1000.0),
                "ttft_p50_ms": lv["ttft_ms"].get("p50"), "tpot_p50_ms": lv["tpot_ms"].get("p50"),
                "api_cpu_s": api_cpu, "api_cpu_share": api_cpu / lv["duration_s"],
                "api_cpu_us_per_token": 1e6 * api_cpu / max(1, lv["output_tokens"]),
            }  # fmt: skip
            result["levels"].append(row)
            print(f"c={c:5d}: {row['output_tok_s']:9,.0f} tok/s of {row['engine_tok_s']:9,.0f} the engines could stream; "
                  f"TPOT p50 {row['tpot_p50_ms']:.1f} ms (step {args.step_ms:g}); API process {row['api_cpu_share']:.0%} "
                  f"of a core, {row['api_cpu_us_per_token']:.1f} us of CPU per streamed token", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
