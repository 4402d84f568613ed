"""Peak host memory while tenk loads a checkpoint onto the GPU (issue 12): loading must stream
tensor by tensor, not hold the checkpoint in RAM.

    python benchmarks/load_rss.py --preset minimax-m2 --num-layers 8 --quantization nvfp4 \
        --dir /tmp/minimax-m2-8l-nvfp4 --out $OUT/load_rss_minimax_m2_8l_nvfp4.json

Writes the random checkpoint first when --dir has none (`tenk random-checkpoint --quantization`,
streamed), then loads it with tenk's engine in a fresh process (--device, small KV pool, no CUDA
graphs) while a thread samples /proc/self/status. Reported: checkpoint bytes on disk, the
process's peak RSS (VmHWM) and the peaks of its anonymous (heap) and file-backed (mmap'd
safetensors pages) parts, each also as a fraction of the checkpoint, plus the RSS before loading
(Python, torch, CUDA context) for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, threading, time
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[k] = int(v.split()[0]) * 1024
    return out
peak = {"RssAnon": 0, "RssFile": 0}
stop = False
def sample():
    while not stop:
        s = status()
        for k in peak:
            peak[k] = max(peak[k], s.get(k, 0))
        time.sleep(0.01)
import torch
a = json.loads(sys.argv[1])
if a["device"] == "cuda":
    torch.cuda.init()
    torch.zeros(1, device="cuda")
before = status()
t = threading.Thread(target=sample, daemon=True)
t.start()
from tenk.engine.config import EngineConfig
from tenk.engine.llm_engine import LLMEngine
t0 = time.perf_counter()
engine = LLMEngine(EngineConfig(model=a["dir"], device=a["device"], dtype="bfloat16" if a["device"] == "cuda" else "float32",
                                num_kv_blocks=64, max_model_len=256, max_num_seqs=4, enforce_eager=True,
                                tensor_parallel_size=a["tp"]))
load_s = time.perf_counter() - t0
stop = True
t.join()
after = status()
print("RESULT " + json.dumps({"before": before, "after": after, "peak_anon": peak["RssAnon"], "peak_file": peak["RssFile"],
                              "vm_hwm": after["VmHWM"], "load_s": load_s}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="minimax-m2")
    ap.add_argument("--num-layers", type=int, default=8)
    ap.add_argument("--quantization", default="nvfp4")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    d = Path(args.dir)
    t0 = time.perf_counter()
    write_s = None
    if not any(d.glob("*.safetensors")):
        cmd = [sys.executable, "-m", "tenk.cli.main", "random-checkpoint", args.preset, str(d), "--force",
               "--quantization", args.quantization]
        if args.num_layers:
            cmd += ["--num-layers", str(args.num_layers)]
        subprocess.run(cmd, check=True, env=env)
        write_s = time.perf_counter() - t0
    ckpt = sum(f.stat().st_size for f in d.glob("*.safetensors"))
    child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({"dir": str(d), "device": args.device, "tp": args.tp})],
                           env=env, capture_output=True, text=True)
    if child.returncode != 0 or "RESULT " not in child.stdout:
        print(child.stdout[-3000:], child.stderr[-3000:], file=sys.stderr)
        return 1
    r = json.loads(child.stdout.split("RESULT ", 1)[1])
    result = {
        "benchmark": "load_rss", "preset": args.preset, "num_layers": args.num_layers, "quantization": args.quantization,
        "device": args.device, "tp": args.tp, "checkpoint_bytes": ckpt, "write_s": write_s, "load_s": r["load_s"],
        "rss_before_load_bytes": r["before"]["VmRSS"], "peak_rss_bytes": r["vm_hwm"],
        "peak_anon_bytes": r["peak_anon"], "peak_file_bytes": r["peak_file"],
        "peak_rss_over_checkpoint": r["vm_hwm"] / ckpt, "peak_anon_over_checkpoint": r["peak_anon"] / ckpt,
        "rss_after_load_bytes": r["after"]["VmRSS"],
    }
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    print(f"checkpoint {gib(ckpt)}; peak RSS {gib(r['vm_hwm'])} ({result['peak_rss_over_checkpoint']:.1%}), anonymous "
          f"{gib(r['peak_anon'])}, file-backed {gib(r['peak_file'])}; before loading {gib(r['before']['VmRSS'])}; "
          f"loaded in {r['load_s']:.1f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
