"""The bench client's own ceiling: `tenk bench --self-test` against the built-in fake server
(streams instantly), for 1, 2, ... worker processes. Writes
benchmarks/results/bench_selftest_<host>.json.

    python benchmarks/bench_selftest.py                      # workers 1, 2, cores/2
    python benchmarks/bench_selftest.py --workers 1,2,4,8 --server-procs 4

On a machine with few cores the fake server shares them with the client, so the ceiling is a
lower bound there; on the 16-core GPU hosts give the server a few processes (--server-procs).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from tenk.bench.selftest import SelfTestConfig, run_self_test


def main() -> None:
    cores = os.cpu_count() or 2
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default=",".join(str(w) for w in sorted({1, 2, max(1, cores // 2)})))
    ap.add_argument("--server-procs", type=int, default=max(1, cores // 4))
    ap.add_argument("--concurrency", default="64,256,512")
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--tokens-per-chunk", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    host = socket.gethostname()
    out = Path(a.out or Path(__file__).parent / "results" / f"bench_selftest_{host}.json")
    runs = []
    for w in (int(x) for x in a.workers.split(",")):
        st = SelfTestConfig(
            workers=w, server_procs=a.server_procs, tokens_per_chunk=a.tokens_per_chunk,
            concurrency=tuple(int(c) for c in a.concurrency.split(",")), output_len=a.output_len,
        )
        t0 = time.perf_counter()
        result, stats = run_self_test(st)
        peak = result.peak()
        runs.append({
            "workers": w,
            "server_procs": a.server_procs,
            "tokens_per_chunk": a.tokens_per_chunk,
            "ceiling_output_tok_s": peak.output_throughput,
            "ceiling_concurrency": peak.concurrency,
            "levels": [
                {"concurrency": lv.concurrency, "output_throughput": lv.output_throughput,
                 "steady_output_throughput": (lv.steady or {}).get("output_throughput"),
                 "ttft_p50_ms": lv.ttft_ms.p50, "ttft_p99_ms": lv.ttft_ms.p99, "failed": lv.failed}
                for lv in result.levels
            ],
            "server": stats,
            "wall_s": time.perf_counter() - t0,
        })
        print(f"workers={w}: ceiling {peak.output_throughput:,.0f} output tok/s (c={peak.concurrency})", flush=True)
    doc = {
        "schema": "tenk.bench_selftest/1",
        "host": host,
        "cpu_count": cores,
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "output_len": a.output_len,
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
