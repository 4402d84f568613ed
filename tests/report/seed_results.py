"""Result files in the `tenk.bench/1` schema holding the seed README's published numbers (MiniMax-M2.7
on RTX PRO 6000, vLLM 0.19): output throughput per concurrency as published; latencies derived
from them (TPOT = c / throughput, TTFT a fixed prefill share), since the seed did not publish
those. Only the report tests use them: they exercise a four-configuration, twelve-level report
with memory layouts, without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

GB = 10**9
SEED = {  # name -> (gpus, tp, dp, model GB, {c: tok/s}); the KV cache gets 90% of 96 GB minus the rest
    "FP8 TP=4": (4, 4, 1, 229, {1: 116, 4: 328, 8: 536, 16: 850, 32: 1406, 64: 2126, 128: 2096}),
    "NVFP4 TP=4": (4, 4, 1, 126, {1: 104, 4: 315, 8: 543, 16: 892, 32: 1635, 64: 2472, 128: 2496}),
    "NVFP4 TP=2 DP=2": (4, 2, 2, 126, {1: 85, 4: 292, 8: 518, 16: 843, 32: 1441, 64: 2222, 128: 3995}),
    "NVFP4 TP=2 DP=3": (6, 2, 3, 126, {1: 84, 4: 283, 8: 485, 16: 799, 32: 1312, 64: 2406, 128: 3963,
                                                 256: 6305, 384: 7859, 512: 9020, 640: 10217, 896: 11401}),
}
KV_BYTES_PER_TOKEN = 62 * 8 * 128 * 2 * 2  # MiniMax-M2 bf16 KV (DESIGN.md)


def _stats(v: float) -> dict:
    return {"mean": v, "p50": v, "p90": v * 1.1, "p99": v * 1.25, "min": v * 0.9, "max": v * 1.3, "n": 64}


def seed_doc(name: str) -> dict:
    gpus, tp, dp, model_gb, sweep = SEED[name]
    weights = model_gb * GB // tp
    reserve = 4 * GB
    kv_per_gpu = int(0.9 * 96 * GB) - weights - reserve
    kv_tokens = kv_per_gpu * tp // KV_BYTES_PER_TOKEN
    levels = []
    for c, tps in sweep.items():
        tpot = 1000.0 * c / tps
        levels.append({
            "concurrency": c, "request_rate": None, "num_prompts": max(4 * c, 64), "completed": max(4 * c, 64),
            "failed": 0, "unfinished": 0, "errors": [], "duration_s": 60.0, "input_tokens": 256 * max(4 * c, 64),
            "output_tokens": int(tps * 60), "output_throughput": float(tps), "total_throughput": 2.0 * tps,
            "request_throughput": tps / 256, "steady": None, "ttft_ms": _stats(40.0 + 2.0 * c), "tpot_ms": _stats(tpot),
            "itl_ms": _stats(tpot), "e2e_ms": _stats(255 * tpot), "goodput": None, "token_check": {},
            "input_check": {}, "server_metrics": {}, "dataset": {}, "interrupted": False, "timed_out": False,
            "warnings": [], "started_at": 0.0,
        })
    return {
        "schema": "tenk.bench/1",
        "config": {
            "urls": ["http://127.0.0.1:8040"], "model": "MiniMax-M2.7", "concurrency": list(sweep),
            "input_len": "256", "output_len": "256",
            "labels": {"name": name, "gpu": "RTX PRO 6000", "quantization": name.split()[0]},
            "layout": {"gpus": gpus, "tp": tp, "dp": dp, "gpu_name": "RTX PRO 6000", "device": "cuda",
                       "gpu_memory_bytes": 96 * GB, "weights_bytes_per_gpu": weights,
                       "kv_bytes_per_gpu": kv_per_gpu, "reserve_bytes_per_gpu": reserve, "kv_tokens": kv_tokens},
        },
        "environment": {"host": "seed", "cpu_count": 24},
        "servers": [], "warmup": None, "interrupted": False, "warnings": [], "levels": levels,
    }


def write_seed_results(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(SEED):
        p = out_dir / f"seed-{i}.json"
        p.write_text(json.dumps(seed_doc(name), indent=1))
        paths.append(p)
    return paths
