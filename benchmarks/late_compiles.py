"""Which Triton kernels compile after `tenk serve` says it is up, and what they cost the first
requests: a fresh Triton cache, the server started, then one short `tenk bench` level per
concurrency; after each level the cache is listed and every kernel compiled since the last look is
recorded beside that level's TTFT. A kernel compiled mid-serving costs a step a second or more.

    python benchmarks/late_compiles.py --preset qwen3-30b-a3b --out $OUT/late_compiles_h100.json \
        -- --quantization nvfp4 --kv-cache-dtype fp8

Arguments after `--` go to `tenk serve` (which always gets --load-format dummy and a free port).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from headline import free_port, wait_ready  # noqa: E402  (the same server start as the headline)


def compiled(cache: Path) -> Counter:
    """Kernel name -> variants in the Triton cache (one metadata JSON per compiled variant)."""
    return Counter(p.name.removesuffix(".json") for p in cache.rglob("*.json") if not p.name.startswith("__grp__"))


def main() -> int:
    argv = sys.argv[1:]
    serve_extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--concurrency", default="1,4,8,16,32,64,128,256")
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--startup-timeout", type=float, default=300)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    cache = Path(tempfile.mkdtemp(prefix="tenk-triton-cache-"))
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache)}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(a.out).with_suffix(".server.log")
    cmd = [sys.executable, "-m", "tenk.cli.main", "serve", a.preset, "--load-format", "dummy", "--port", str(port),
           "--no-enable-prefix-caching", *serve_extra]  # fmt: skip
    t0 = time.monotonic()
    with open(log, "w") as logf:
        server = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
    levels = []
    try:
        wait_ready(url, server, a.startup_timeout)
        startup_s = time.monotonic() - t0
        seen = compiled(cache)
        at_start = dict(seen)
        models = json.loads(urllib.request.urlopen(url + "/v1/models", timeout=10).read())["data"]
        tokenizer = models[0]["root"]  # the preset's directory: prompt ids drawn from its vocabulary
        for i, c in enumerate(int(x) for x in a.concurrency.split(",")):
            out = cache.parent / f"late-compiles-c{c}.json"
            bench = [sys.executable, "-m", "tenk.cli.main", "bench", "--url", url, "--model", a.preset,
                     "-c", str(c), "-n", str(max(8, c)), "--input-len", str(a.input_len),
                     "--output-len", str(a.output_len), "--warmup", "8" if i == 0 else "0",
                     "--prompt-format", "ids", "--tokenizer", tokenizer, "-q", "-o", str(out)]  # fmt: skip
            proc = subprocess.run(bench, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
            if proc.returncode != 0 or not out.exists():
                raise SystemExit(f"tenk bench at c={c} failed ({proc.returncode}): {proc.stderr[-2000:]}")
            lv = json.loads(out.read_text())["levels"][0]
            now = compiled(cache)
            new = {k: v - seen.get(k, 0) for k, v in now.items() if v > seen.get(k, 0)}
            seen = now
            levels.append({
                "concurrency": c, "completed": lv["completed"], "failed": lv["failed"],
                "ttft_ms": {k: lv["ttft_ms"].get(k) for k in ("p50", "p99", "max", "mean")},
                "output_tok_s": lv["output_throughput"], "new_kernels": new,
            })  # fmt: skip
            print(f"c={c:4d}  TTFT p50 {lv['ttft_ms']['p50']:8.1f} ms  max {lv['ttft_ms'].get('max') or 0:8.1f} ms  "
                  f"compiled during the level: {new or 'nothing'}", flush=True)  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    import torch

    doc = {
        "benchmark": "late_compiles", "preset": a.preset, "serve_command": cmd[2:],
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "startup_s": startup_s, "kernels_at_start": at_start, "levels": levels,
        "late_compiles": sum(sum(lv["new_kernels"].values()) for lv in levels),
        "warm_up_log": [ln for ln in log.read_text().splitlines() if "warm-up" in ln],
    }  # fmt: skip
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}: {doc['late_compiles']} kernel variants compiled after start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
