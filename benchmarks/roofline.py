"""Roofline of a measured decode step (issue 8): bytes one step must read (weights touched + KV
read) and FLOPs, against the step time and category times of benchmarks/step_profile.py.

    python benchmarks/roofline.py benchmarks/results/step_profile_nvfp4_fp8kv_h100.json \
        --out benchmarks/results/roofline_nvfp4_fp8kv_h100.json

Bytes per step at batch B and mean context L (MoE models):
  routed experts: every expert some token picks (expected count E * (1 - (1 - k/E)^B)), each
                  3 * H * I weights at the format's bytes per weight (NVFP4: 0.5 + 1/16 for the
                  E4M3 block scale; bf16: 2);
  the rest:       attention projections, router, norms and lm_head in bf16 (embedding rows: B);
  KV cache:       B * L tokens * 2 * layers * kv_heads * head_dim * KV bytes per element.
FLOPs: 2 * (active weights per token) * B + attention 4 * B * L * heads * head_dim * layers.
Ceilings: 3.0 TB/s (H100 copy bandwidth measured here) and 790 TFLOP/s bf16 (DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

HBM_TBPS = 3.0
BF16_TFLOPS = 790.0
WEIGHT_BYTES = {"nvfp4": 0.5 + 1 / 16, "none": 2.0, "bf16": 2.0, "fp8": 1.0}
KV_BYTES = {"auto": 2, "bf16": 2, "fp8": 1, "fp8_e4m3": 1}


def step_roofline(mc, quantization: str, kv_dtype: str, batch: int, context: float) -> dict:
    layers, h = mc.num_layers, mc.hidden_size
    q_size, kv_size = mc.num_heads * mc.head_dim, mc.num_kv_heads * mc.head_dim
    attn_w = h * (q_size + 2 * kv_size) + q_size * h
    e, k, inter = mc.num_experts, mc.num_experts_per_tok, mc.moe_intermediate_size
    touched = e * (1 - (1 - k / e) ** batch)
    expert_w = 3 * h * inter
    wb = WEIGHT_BYTES[quantization]
    experts_bytes = layers * touched * expert_w * wb
    dense_bytes = 2 * (layers * (attn_w + h * e) + mc.vocab_size * h + batch * h)
    kv_bytes = batch * context * 2 * layers * kv_size * KV_BYTES[kv_dtype]
    flops = 2 * batch * (layers * (attn_w + h * e + k * expert_w) + mc.vocab_size * h)
    flops += 4 * batch * context * q_size * layers
    total = experts_bytes + dense_bytes + kv_bytes
    t_mem = total / (HBM_TBPS * 1e12) * 1e3
    t_flop = flops / (BF16_TFLOPS * 1e12) * 1e3
    return {
        "batch": batch, "context": context, "experts_touched_per_layer": touched,
        "bytes": {"experts": experts_bytes, "dense_bf16": dense_bytes, "kv": kv_bytes, "total": total},
        "flops": flops,
        "ms": {"experts": experts_bytes / (HBM_TBPS * 1e9), "dense_bf16": dense_bytes / (HBM_TBPS * 1e9),
               "kv": kv_bytes / (HBM_TBPS * 1e9), "memory_bound": t_mem, "compute_bound": t_flop,
               "roofline": max(t_mem, t_flop)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="step_profile JSON")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from tenk.models.config import ModelConfig
    from tenk.models.source import materialize_preset

    prof = json.loads(Path(args.profile).read_text())
    mc = ModelConfig.from_dir(materialize_preset(prof["preset"], None))
    rows = []
    for b in prof["batches"]:
        # mean context during the measured steps: prompt + the warm-up steps + half the timed ones
        context = prof["context"] + 4 + 15
        r = step_roofline(mc, prof["quantization"], prof.get("kv_cache_dtype", "auto"), b["running"], context)
        r["measured_step_ms"] = b["step_ms"]
        r["measured_busy_ms"] = b["device_busy_ms"]
        r["measured_categories_ms"] = b["categories_ms"]
        r["step_over_roofline"] = b["step_ms"] / r["ms"]["roofline"]
        r["busy_over_roofline"] = b["device_busy_ms"] / r["ms"]["roofline"]
        rows.append(r)
        gb = {k: round(v / 1e9, 2) for k, v in r["bytes"].items()}
        print(f"B={b['running']}: {gb} GB, {r['flops'] / 1e12:.2f} TFLOP -> roofline {r['ms']['roofline']:.2f} ms; "
              f"measured step {b['step_ms']:.2f} ms ({r['step_over_roofline']:.2f}x), "
              f"device busy {b['device_busy_ms']:.2f} ms ({r['busy_over_roofline']:.2f}x)")
    result = {"source": args.profile, "device": prof.get("device"), "preset": prof["preset"],
              "quantization": prof["quantization"], "kv_cache_dtype": prof.get("kv_cache_dtype"),
              "ceilings": {"hbm_tbps": HBM_TBPS, "bf16_tflops": BF16_TFLOPS}, "batches": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
