"""FP8 (W8A16) fused MoE against the bf16 torch._grouped_mm MoE, same routing, same run; and the
FP8 dense GEMM against bf16 F.linear on the attention projections.

    python benchmarks/fp8_kernels.py [--tp 1,2] [--tokens 1,16,...] [--schemes block,tensor] [--out DIR]
    python benchmarks/fp8_kernels.py --smoke   # CPU, Triton interpreter, tiny shapes: proves the script runs

Expert shapes: MiniMax-M2 (E 256, H 3072, I 1536 / TP), top-8, tokens routed by a softmax over
random logits. FP8 weights are random E4M3 codes made on the GPU with block-128 scales (the
official checkpoint's layout) or per-tensor scales (w1 and w3 each their own); the bf16 baseline
runs on exactly those weights dequantized, so both paths compute the same function and are
checked against fused_moe_ref (and the dense GEMM against its reference) before anything is timed.
Dense shapes: MiniMax-M2's q|k|v (48 + 2 x 8 heads of 128, / TP) and o projections.

Timing: triton.testing.do_bench median (L2 flushed), eager and as a CUDA-graph replay; "ms" is the
graph replay up to 256 tokens (decode batches run as graphs in the engine) and eager above, for
both paths alike. Per row: bytes the call must read (weights of the experts the batch touches,
their scales, the activations), TB/s and TFLOP/s on them, speedup over bf16 (FP8 reads half the
bytes, so ~2x is the memory-bound ceiling). Writes fp8_kernels_<gpu>.json to $OUT (or
benchmarks/results/). Budget: ~3 minutes on an H100.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a bare checkout too
sys.path.insert(0, str(Path(__file__).resolve().parent))

from moe_kernels import Shape as MoeShape  # noqa: E402
from moe_kernels import Timer, interpreter_if, lacks_gpu, make_routing, write_result  # noqa: E402  (the NVFP4 benchmark's routing, timing and JSON)

TOKENS = (1, 16, 64, 256, 1024, 4096)
CHECK_TOKENS = 256  # rows checked against the reference (it loops over experts)
CHUNK = 32  # experts dequantized at once for the bf16 copy (fp32 temporaries)


@dataclass(frozen=True)
class Shape(MoeShape):
    block: tuple[int, int] = (128, 128)
    heads: tuple[int, int, int] = (48, 8, 128)  # q heads, kv heads, head_dim (dense shapes)


def shapes(tp_list, smoke: bool) -> dict[str, Shape]:
    if smoke:
        return {f"tp{tp}": Shape(f"tiny-tp{tp}", 6, 256, 128 // tp, 2, (32, 32), (4, 2, 32)) for tp in tp_list}
    return {f"tp{tp}": Shape(f"MiniMax-M2 TP={tp}", 256, 3072, 1536 // tp) for tp in tp_list}


# ---------------------------------------------------------------- cases


def random_fp8(n_mats: int, rows: int, cols: int, scheme: str, block, g, device):
    """[n, rows, cols] E4M3 codes like a quantized weight's (|w| up to 448) and scales that make the
    dequantized weight ~ N(0, 1/cols): block [n, rows/bn, cols/bk], per-tensor [n, 2] (the two row
    halves 4x apart: w1 / w3) or [n]."""
    q = torch.empty(n_mats, rows, cols, dtype=torch.float8_e4m3fn, device=device)
    for i in range(0, n_mats, CHUNK):
        m = min(CHUNK, n_mats - i)
        q[i : i + m] = (torch.randn(m, rows, cols, generator=g, device=device) * 100).clamp_(-448, 448)
    base = 1.0 / (100 * cols**0.5)
    if scheme == "block":
        s = (torch.rand(n_mats, -(-rows // block[0]), -(-cols // block[1]), generator=g, device=device) + 0.5) * base
    else:
        s = torch.full((n_mats,), base, device=device)
    return q, s


def make_experts(shape: Shape, scheme: str, device, seed: int = 0):
    """FP8 experts (w13, s13, w2, s2) and the same experts dequantized to bf16 (fp32 on CPU)."""
    from tenk.kernels.fp8_moe import dequantize_experts

    g = torch.Generator(device=device).manual_seed(seed)
    e, h, i = shape.experts, shape.hidden, shape.inter
    w13, s13 = random_fp8(e, 2 * i, h, scheme, shape.block, g, device)
    w2, s2 = random_fp8(e, h, i, scheme, shape.block, g, device)
    if scheme == "tensor":
        s13 = torch.stack([s13, s13 * 4], 1)  # w1 and w3 scales differ
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    d13 = torch.empty(e, 2 * i, h, dtype=dtype, device=device)
    d2 = torch.empty(e, h, i, dtype=dtype, device=device)
    for a in range(0, e, CHUNK):
        b = min(e, a + CHUNK)
        d13[a:b], d2[a:b] = dequantize_experts(w13[a:b], s13[a:b], w2[a:b], s2[a:b], scheme, dtype, shape.block)
    return (w13, s13, w2, s2), (d13, d2)


def moe_bytes(shape: Shape, ids: torch.Tensor, tokens: int, scheme: str | None) -> int:
    """Bytes one MoE call must read: weights (+ scales) of the touched experts and the activations.
    scheme None: bf16 weights."""
    touched = int(torch.unique(ids[ids >= 0]).numel())
    n = 3 * shape.hidden * shape.inter
    if scheme is None:
        per_expert = 2 * n
    elif scheme == "block":
        per_expert = n + 4 * n // (shape.block[0] * shape.block[1])
    else:
        per_expert = n + 12
    return touched * per_expert + tokens * shape.hidden * 2


# ---------------------------------------------------------------- run


def run_moe(key: str, shape: Shape, scheme: str, tokens_list, timer: Timer, device, rows: list, checks: list) -> None:
    from tenk.kernels import moe
    from tenk.kernels.configs.fp8 import moe_config
    from tenk.kernels.fp8_moe import fp8_fused_moe
    from tenk.kernels.testing import rel_err

    fp8, (d13, d2) = make_experts(shape, scheme, device)
    for tokens in tokens_list:
        x, tw, ids = make_routing(shape, tokens, device, seed=tokens)
        out = torch.full_like(x, float("nan"))
        cfg = moe_config(tokens, shape.experts, shape.hidden, shape.inter, shape.top_k, x.device)
        run_fp8 = lambda: fp8_fused_moe(x, *fp8, tw, ids, scheme, shape.block, out=out, config=cfg)
        run_bf16 = lambda: moe.fused_moe_grouped_mm(x, d13, d2, tw, ids, out=out)

        n = min(tokens, CHECK_TOKENS)
        ref = moe.fused_moe_ref(x[:n], d13, d2, tw[:n], ids[:n])
        for name, fn in (("fp8", run_fp8), ("bf16", run_bf16)):
            out.fill_(float("nan"))
            fn()
            err = rel_err(out[:n], ref)
            checks.append({"kind": "moe", "shape": key, "scheme": scheme, "tokens": tokens, "impl": name,
                           "rel_err": err, "ok": err == err and err < 1e-2})

        pairs = int((ids >= 0).sum())
        flops = 2 * pairs * 3 * shape.hidden * shape.inter
        fp8_ms, fp8_graph, timing = timer.best(run_fp8, tokens)
        bf16_ms, bf16_graph, _ = timer.best(run_bf16, tokens)
        row = {
            "kind": "moe", "shape": key, "dims": shape.__dict__, "scheme": scheme, "tokens": tokens, "pairs": pairs,
            "config": cfg.to_dict(), "timing": timing,
            "fp8_ms": fp8_ms, "fp8_graph_ms": fp8_graph, "bf16_ms": bf16_ms, "bf16_graph_ms": bf16_graph,
            "fp8_bytes": moe_bytes(shape, ids, tokens, scheme), "bf16_bytes": moe_bytes(shape, ids, tokens, None),
            "flops": flops,
        }
        finish(row)
        rows.append(row)
        print(format_row(row), flush=True)


# ---------------------------------------------------------------- dense


def run_dense(key: str, shape: Shape, scheme: str, tokens_list, timer: Timer, device, rows: list, checks: list,
              tp: int) -> None:
    from tenk.kernels.configs.fp8 import dense_config
    from tenk.kernels.fp8_gemm import dequantize_weight, fp8_gemm, fp8_gemm_ref
    from tenk.kernels.testing import rel_err

    hq, hkv, d = shape.heads
    hq, hkv = hq // tp, max(1, hkv // tp)
    projections = {"qkv": ([hq * d, hkv * d, hkv * d], shape.hidden), "o": ([shape.hidden], hq * d)}
    g = torch.Generator(device=device).manual_seed(1)
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    for proj, (shards, k) in projections.items():
        n = sum(shards)
        q, s = random_fp8(1, n, k, scheme, shape.block, g, device)
        q = q[0]
        s = s[0] if scheme == "block" else s.repeat(len(shards)) * torch.arange(1, len(shards) + 1, device=device)
        w_bf16 = dequantize_weight(q, s, scheme, shards, dtype, shape.block)
        for tokens in tokens_list:
            x = torch.randn(tokens, k, generator=g, device=device).to(dtype)
            out = torch.empty(tokens, n, dtype=dtype, device=device)
            cfg = dense_config(tokens, n, k, x.device)
            run_fp8 = lambda: fp8_gemm(x, q, s, scheme, shards, None, shape.block, config=cfg, out=out)
            run_bf16 = lambda: torch.mm(x, w_bf16.t(), out=out)
            ref = fp8_gemm_ref(x.float(), q, s, scheme, shards, None, shape.block)
            for name, fn in (("fp8", run_fp8), ("bf16", run_bf16)):
                out.fill_(float("nan"))
                fn()
                err = rel_err(out, ref)
                checks.append({"kind": "dense", "shape": f"{key}/{proj}", "scheme": scheme, "tokens": tokens,
                               "impl": name, "rel_err": err, "ok": err == err and err < 1e-2})
            fp8_ms, fp8_graph, timing = timer.best(run_fp8, tokens)
            bf16_ms, bf16_graph, _ = timer.best(run_bf16, tokens)
            scale_bytes = s.numel() * 4
            row = {
                "kind": "dense", "shape": f"{key}/{proj}", "dims": {"n": n, "k": k, "shards": shards}, "scheme": scheme,
                "tokens": tokens, "config": cfg.to_dict(), "timing": timing,
                "fp8_ms": fp8_ms, "fp8_graph_ms": fp8_graph, "bf16_ms": bf16_ms, "bf16_graph_ms": bf16_graph,
                "fp8_bytes": n * k + scale_bytes + tokens * k * 2 + tokens * n * 2,
                "bf16_bytes": 2 * n * k + tokens * k * 2 + tokens * n * 2, "flops": 2 * tokens * n * k,
            }
            finish(row)
            rows.append(row)
            print(format_row(row), flush=True)


def finish(row: dict) -> None:
    row["fp8_tbps"] = row["fp8_bytes"] / row["fp8_ms"] / 1e9
    row["fp8_tflops"] = row["flops"] / row["fp8_ms"] / 1e9
    row["bf16_tbps"] = row["bf16_bytes"] / row["bf16_ms"] / 1e9
    row["bf16_tflops"] = row["flops"] / row["bf16_ms"] / 1e9
    row["speedup"] = row["bf16_ms"] / row["fp8_ms"]


def format_row(r: dict) -> str:
    return (f"{r['kind']:5s} {r['shape']:9s} {r['scheme']:6s} T={r['tokens']:5d} {r['timing']:10s} "
            f"fp8 {r['fp8_ms']:8.3f} ms {r['fp8_tbps']:5.2f} TB/s {r['fp8_tflops']:6.1f} TF | "
            f"bf16 {r['bf16_ms']:8.3f} ms {r['bf16_tbps']:5.2f} TB/s {r['bf16_tflops']:6.1f} TF | x{r['speedup']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", default="1,2")
    parser.add_argument("--schemes", default="block,tensor")
    parser.add_argument("--tokens", default=None, help=f"default {','.join(map(str, TOKENS))} (smoke: 1,5,33)")
    parser.add_argument("--no-dense", action="store_true", help="MoE only")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    args = parser.parse_args()
    if lacks_gpu(args, "fp8_kernels.py"):
        return 2
    device = "cpu" if args.smoke else "cuda"
    tps = [int(t) for t in args.tp.split(",")]
    tokens = tuple(int(t) for t in args.tokens.split(",")) if args.tokens else (1, 5, 33) if args.smoke else TOKENS
    timer = Timer(args.smoke)
    started = time.time()
    rows, checks, errors = [], [], {}
    with interpreter_if(args.smoke):
        for tp, (key, shape) in zip(tps, shapes(tps, args.smoke).items()):
            for scheme in args.schemes.split(","):
                for kind in ("moe",) if args.no_dense else ("moe", "dense"):
                    try:
                        if kind == "moe":
                            run_moe(key, shape, scheme, tokens, timer, device, rows, checks)
                        else:
                            run_dense(key, shape, scheme, tokens, timer, device, rows, checks, tp)
                    except Exception:  # one broken case must not hide the others' numbers
                        name = f"{kind}/{key}/{scheme}"
                        errors[name] = traceback.format_exc()
                        print(f"[{name}] FAILED\n{errors[name]}", file=sys.stderr)
                    if not args.smoke:
                        torch.cuda.empty_cache()
    result, path = write_result("fp8_kernels", args.out, args.smoke, started, rows, checks, errors)
    bad = [c for c in checks if not c["ok"]]
    print(f"wrote {path} in {result['seconds']} s; {len(bad)} failed checks, {len(errors)} errors")
    return 1 if bad or errors else 0


if __name__ == "__main__":
    sys.exit(main())
