"""Check every tenk Triton kernel against its torch reference on the GPU, then time it.

    python benchmarks/kernels_gpu.py [--only SUBSTRING] [--out DIR]
    python benchmarks/kernels_gpu.py --smoke   # CPU, Triton interpreter, tiny shapes: proves the script runs

Checks: relative error ||out - ref|| / ||ref|| on fresh random inputs per check, with outputs
pre-filled with NaN (a row the kernel forgets stays NaN and fails the check). Timings:
triton.testing.do_bench median (L2 flushed between runs), reported with the bandwidth or FLOP rate
the kernel reaches. Shapes are Qwen3-30B-A3B's (32 q / 4 kv heads, head_dim 128, hidden 2048,
128 experts top-8, FFN 768) and MiniMax-M2's (48 / 8 heads, partial rotary 64 of 128).
Writes kernels_gpu.json to $OUT (or benchmarks/results/) and prints a table. Budget: < 3 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

DEV = "cuda"
SMOKE = False  # --smoke: CPU + Triton interpreter, tiny shapes, one call instead of do_bench
BF16 = torch.bfloat16
CHECKS: list[dict] = []
TIMINGS: list[dict] = []


def n(full: int, smoke: int) -> int:
    """A size: the real one on the GPU, a tiny one in --smoke runs."""
    return smoke if SMOKE else full


def bench_ms(fn) -> float:
    if SMOKE:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))


def record_check(name: str, err: float, tol: float, **extra) -> None:
    ok = err == err and err < tol  # NaN fails
    CHECKS.append({"name": name, "rel_err": err, "tol": tol, "ok": ok, **extra})


def record_time(name: str, ms: float, unit: str, value: float, **extra) -> None:
    TIMINGS.append({"name": name, "ms": ms, "unit": unit, "value": value, **extra})


# ---------------------------------------------------------------- cases


def small_ops():
    from tenk.kernels import activation, rmsnorm, rotary
    from tenk.kernels.testing import rel_err

    g = torch.Generator(device=DEV).manual_seed(0)
    T, H = n(8192, 8), n(2048, 64)
    x = torch.randn(T, H, generator=g, device=DEV).to(BF16)
    r = torch.randn(T, H, generator=g, device=DEV).to(BF16)
    w = torch.randn(H, generator=g, device=DEV).to(BF16)
    record_check("rms_norm", rel_err(rmsnorm.rms_norm_triton(x, w, 1e-6), rmsnorm.rms_norm_ref(x, w, 1e-6)), 4e-3)
    out, res = rmsnorm.fused_add_rms_norm_triton(x, r, w, 1e-6)
    out_ref, res_ref = rmsnorm.fused_add_rms_norm_ref(x, r, w, 1e-6)
    record_check("fused_add_rms_norm", max(rel_err(out, out_ref), rel_err(res, res_ref)), 4e-3)
    ms = bench_ms(lambda: rmsnorm.rms_norm_triton(x, w, 1e-6))
    record_time(f"rms_norm [{T},{H}]", ms, "GB/s", 2 * x.numel() * 2 / ms / 1e6)
    ms_ref = bench_ms(lambda: rmsnorm.rms_norm_ref(x, w, 1e-6))
    record_time(f"rms_norm torch ref [{T},{H}]", ms_ref, "GB/s", 2 * x.numel() * 2 / ms_ref / 1e6)
    ms = bench_ms(lambda: rmsnorm.fused_add_rms_norm_triton(x, r, w, 1e-6))
    record_time(f"fused_add_rms_norm [{T},{H}]", ms, "GB/s", 4 * x.numel() * 2 / ms / 1e6)

    for hq, hkv, rot in [(32, 4, 128), (48, 8, 64)]:
        d = n(128, 16)
        rot = rot * d // 128
        qkv = torch.randn(T, (hq + 2 * hkv) * d, generator=g, device=DEV).to(BF16)
        q, k = qkv[:, : hq * d].view(T, hq, d), qkv[:, hq * d : (hq + hkv) * d].view(T, hkv, d)
        pos = torch.randint(0, 8192, (T,), generator=g, device=DEV)
        cache = rotary.rope_cos_sin_cache(rot, 8192, 5e6, device=DEV)
        q_ref, k_ref = rotary.apply_rotary_ref(q.clone(), k.clone(), pos, cache, rot)
        q2, k2 = q.clone(), k.clone()
        rotary.apply_rotary_triton(q2, k2, pos, cache, rot)
        record_check(f"rotary {hq}/{hkv} rot{rot}", max(rel_err(q2, q_ref), rel_err(k2, k_ref)), 4e-3)
        ms = bench_ms(lambda: rotary.apply_rotary_triton(q, k, pos, cache, rot))
        moved = 2 * T * (hq + hkv) * rot * 2  # read + write the rotated dims
        record_time(f"rotary T={T} {hq}/{hkv} rot{rot}", ms, "GB/s", moved / ms / 1e6)

    P, inter = n(16384, 8), n(768, 32)
    h = torch.randn(P, 2 * inter, generator=g, device=DEV).to(BF16) * 3
    out = torch.full((P, inter), float("nan"), dtype=BF16, device=DEV)
    record_check("silu_and_mul", rel_err(activation.silu_and_mul_triton(h, out=out), activation.silu_and_mul_ref(h)), 4e-3)
    ms = bench_ms(lambda: activation.silu_and_mul_triton(h))
    record_time(f"silu_and_mul [{P},{2 * inter}]", ms, "GB/s", 3 * P * inter * 2 / ms / 1e6)


def kv_store():
    from tenk.kernels import attention_triton as at
    from tenk.kernels.testing import make_attention_case

    for cache_dtype in (BF16, torch.float8_e4m3fn):
        seqs = [(n(1024, 20), n(1024, 20))] * n(8, 2)
        case = make_attention_case(seqs, 32, 4, n(128, 16), dtype=BF16, cache_dtype=cache_dtype, device=DEV, seed=1,
                                   kv_scale=0.05 if cache_dtype != BF16 else 1.0)
        kc, vc = case.k_cache.clone(), case.v_cache.clone()
        ms = bench_ms(lambda: at.store_kvcache_triton(case.k, case.v, kc, vc, case.meta.slot_mapping,
                                                      case.k_scale, case.v_scale))
        T = case.k.shape[0]
        moved = 2 * case.k.numel() * (2 + case.k_cache.element_size())  # read k, v; write both
        record_time(f"store_kvcache T={T} {str(cache_dtype)[6:]}", ms, "GB/s", moved / ms / 1e6)


def _kv_bytes(case) -> int:
    hkv, d = case.k_cache.shape[2], case.k_cache.shape[3]
    return 2 * sum(case.meta.seq_lens_cpu) * hkv * d * case.k_cache.element_size()


def attention():
    from tenk.kernels import attention_triton as at
    from tenk.kernels.testing import check_attention, make_attention_case

    rng = torch.Generator().manual_seed(2)
    D = n(128, 16)

    def lens(count, lo, hi):
        return torch.randint(lo, hi, (n(count, 3),), generator=rng).tolist()

    def heads(hq, hkv):
        return (hq, hkv) if not SMOKE else (hq // hkv * 2, 2)

    # Correctness at model shapes (fresh inputs for each).
    mixed = [(700, 700), (900, 300), (257, 1), (1, 1), (64, 0)] + [(m, 1) for m in lens(60, 2, 900)]
    if SMOKE:
        mixed = [(40, 40), (50, 13), (17, 1), (1, 1), (20, 0)]
    fp8 = {"cache_dtype": torch.float8_e4m3fn, "kv_scale": 0.02}
    for name, seqs, hq, hkv, kw in [
        ("decode qwen3 B=256", [(m, 1) for m in lens(256, 1, n(1024, 60))], 32, 4, {}),
        ("decode qwen3 B=8 ctx<=4k split", [(m, 1) for m in lens(8, n(2000, 20), n(4096, 90))], 32, 4, {}),
        ("decode minimax B=128", [(m, 1) for m in lens(128, 1, n(1024, 60))], 48, 8, {}),
        ("mixed qwen3", mixed, 32, 4, {}),
        ("mixed minimax", mixed, 48, 8, {}),
        ("decode qwen3 fp8 B=128", [(m, 1) for m in lens(128, 1, n(2048, 60))], 32, 4, fp8),
        ("mixed qwen3 fp8", mixed, 32, 4, fp8),
    ]:
        case = make_attention_case(seqs, *heads(hq, hkv), D, dtype=BF16, device=DEV, seed=len(CHECKS), **kw)
        r = check_attention(case)
        record_check(f"attention {name}", r["rel_err"], 1e-2, cache_equal=r["cache_equal"])
        if not r["cache_equal"]:
            CHECKS[-1]["ok"] = False

    # Decode timings: bytes of K/V read, to hold against the 3.0 TB/s copy ceiling.
    for B, lo, hi, hq, hkv, cache_kw, splits in [
        (64, 256, 768, 32, 4, {}, None),
        (256, 256, 768, 32, 4, {}, None),
        (1024, 256, 768, 32, 4, {}, None),
        (256, 1024, 3072, 32, 4, {}, None),
        (256, 1024, 3072, 32, 4, fp8, None),
        (8, 3000, 4096, 32, 4, {}, None),
        (8, 3000, 4096, 32, 4, {}, 1),
        (256, 256, 768, 48, 8, {}, None),
    ]:
        lo, hi = n(lo, 10), n(hi, 40)
        case = make_attention_case([(m, 1) for m in lens(B, lo, hi)], *heads(hq, hkv), D, dtype=BF16,
                                   device=DEV, seed=B, max_blocks=hi // 16 + 1, **cache_kw)
        at.store_kvcache_triton(case.k, case.v, case.k_cache, case.v_cache, case.meta.slot_mapping,
                                case.k_scale, case.v_scale)
        out = torch.empty_like(case.q)
        call = lambda: at.paged_attention_triton(case.q, None, None, case.k_cache, case.v_cache, case.meta,
                                                 case.scale, k_scale=case.k_scale, v_scale=case.v_scale,
                                                 out=out, num_kv_splits=splits)
        ms = bench_ms(call)
        tag = f"decode {hq}/{hkv} B={B} ctx {lo}-{hi}{' fp8' if cache_kw else ''}{' splits=1' if splits == 1 else ''}"
        record_time(tag, ms, "GB/s", _kv_bytes(case) / ms / 1e6)

    # Decode kernel tile variants on the main shape (tuning hints for the defaults).
    case = make_attention_case([(m, 1) for m in lens(512, n(256, 10), n(768, 40))], *heads(32, 4), D, dtype=BF16,
                               device=DEV, seed=3)
    out = torch.empty_like(case.q)
    for block_n in (32, 64, 128):
        ms = bench_ms(lambda: at.paged_attention_triton(case.q, None, None, case.k_cache, case.v_cache, case.meta,
                                                        case.scale, out=out, block_n=block_n))
        record_time(f"decode 32/4 B=512 ctx 256-768 block_n={block_n}", ms, "GB/s", _kv_bytes(case) / ms / 1e6)

    # fp8 cache: computed in fp16 (default) vs Triton's cast to bf16, and the token tile.
    case = make_attention_case([(m, 1) for m in lens(256, n(256, 10), n(768, 40))], *heads(32, 4), D, dtype=BF16,
                               device=DEV, seed=5, **fp8)
    at.store_kvcache_triton(case.k, case.v, case.k_cache, case.v_cache, case.meta.slot_mapping,
                            case.k_scale, case.v_scale)
    out = torch.empty_like(case.q)
    default_f16 = at.FP8_KV_F16
    try:
        for f16 in (True, False):
            at.FP8_KV_F16 = f16
            for block_n in (64, 128):
                call = lambda: at.paged_attention_triton(case.q, None, None, case.k_cache, case.v_cache, case.meta,
                                                         case.scale, k_scale=case.k_scale, v_scale=case.v_scale,
                                                         out=out, block_n=block_n)
                ms = bench_ms(call)
                record_time(f"decode 32/4 B=256 ctx 256-768 fp8 {'f16' if f16 else 'bf16 cast'} block_n={block_n}", ms,
                            "GB/s", _kv_bytes(case) / ms / 1e6)
    finally:
        at.FP8_KV_F16 = default_f16

    # Prefill: causal FLOPs, against torch SDPA (flash) on the same data, unpaged.
    hq, hkv = heads(32, 4)
    for L, count in [(n(1024, 20), n(8, 2)), (n(4096, 40), n(2, 1))]:
        case = make_attention_case([(L, L)] * count, hq, hkv, D, dtype=BF16, device=DEV, seed=L)
        at.store_kvcache_triton(case.k, case.v, case.k_cache, case.v_cache, case.meta.slot_mapping)
        out = torch.empty_like(case.q)
        flops = count * 4 * hq * D * L * L / 2
        ms = bench_ms(lambda: at.paged_attention_triton(case.q, None, None, case.k_cache, case.v_cache, case.meta,
                                                        case.scale, out=out))
        record_time(f"prefill 32/4 {count}x{L}", ms, "TFLOP/s", flops / ms / 1e9)
        q = case.q.reshape(count, L, hq, D).transpose(1, 2).contiguous()
        k = case.k.reshape(count, L, hkv, D).transpose(1, 2).contiguous()
        v = case.v.reshape(count, L, hkv, D).transpose(1, 2).contiguous()
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        ms = bench_ms(sdpa)
        record_time(f"prefill torch SDPA (unpaged) {count}x{L}", ms, "TFLOP/s", flops / ms / 1e9)

    # A realistic mixed step: one 2048-token chunk after a 2048 prefix + 256 decodes.
    seqs = [(n(4096, 60), n(2048, 30))] + [(m, 1) for m in lens(256, n(256, 10), n(768, 40))]
    case = make_attention_case(seqs, hq, hkv, D, dtype=BF16, device=DEV, seed=5)
    at.store_kvcache_triton(case.k, case.v, case.k_cache, case.v_cache, case.meta.slot_mapping)
    out = torch.empty_like(case.q)
    ms = bench_ms(lambda: at.paged_attention_triton(case.q, None, None, case.k_cache, case.v_cache, case.meta,
                                                    case.scale, out=out))
    record_time("mixed step 2048-chunk + 256 decodes", ms, "GB/s(kv)", _kv_bytes(case) / ms / 1e6)


def fused_moe():
    from tenk.kernels import moe
    from tenk.kernels.testing import make_moe_case, rel_err

    E, H, inter, k = n(128, 8), n(2048, 64), n(768, 32), n(8, 2)
    impls = {"grouped_mm": moe.fused_moe_grouped_mm, "triton": moe.fused_moe_triton}
    for tokens, drop in [(1, 0.0), (n(64, 5), 0.0), (n(512, 7), 0.1), (n(4096, 9), 0.0)]:
        c = make_moe_case(tokens, H, inter, E, k, dtype=BF16, device=DEV, seed=tokens, drop_fraction=drop)
        ref = moe.fused_moe_ref(c.x, c.w13, c.w2, c.topk_weights, c.topk_ids)
        for impl in ("grouped_mm", "triton"):
            d = make_moe_case(tokens, H, inter, E, k, dtype=BF16, device=DEV, seed=tokens, drop_fraction=drop)
            out = torch.full_like(d.x, float("nan"))
            impls[impl](d.x, d.w13, d.w2, d.topk_weights, d.topk_ids, out=out)
            record_check(f"fused_moe {impl} T={tokens} drop={drop}", rel_err(out, ref), 1e-2)
        del c, ref

    c = make_moe_case(n(16384, 16), H, inter, E, k, dtype=BF16, device=DEV, seed=99)  # shared by the timings
    for tokens in (1, 16, 64, 256, 1024, 4096, 16384) if not SMOKE else (1, 16):
        x, w, ids = c.x[:tokens], c.topk_weights[:tokens], c.topk_ids[:tokens]
        touched = int(torch.unique(ids).numel())
        weight_bytes = touched * 3 * H * inter * 2
        flops = 2 * tokens * k * 3 * H * inter
        for impl in ("grouped_mm", "triton"):
            ms = bench_ms(lambda: impls[impl](x, c.w13, c.w2, w, ids))
            record_time(f"fused_moe {impl} T={tokens}", ms, "TB/s", weight_bytes / ms / 1e9,
                        tflops=round(flops / ms / 1e9, 1))
    # The bar from DESIGN.md: torch._grouped_mm alone on w1|w3, tokens spread evenly.
    for tokens in (16, n(4096, 32)):
        per = tokens * k // E
        xs = torch.randn(tokens * k, H, device=DEV, dtype=BF16)
        offs = torch.arange(per, tokens * k + 1, per, device=DEV, dtype=torch.int32)
        ms = bench_ms(lambda: torch._grouped_mm(xs, c.w13.transpose(1, 2), offs=offs))
        record_time(f"torch._grouped_mm w13 only T={tokens}", ms, "TB/s", E * 2 * H * inter * 2 / ms / 1e9)


def cuda_graphs():
    """Decode attention and both MoE paths captured and replayed on new inputs."""
    from tenk.kernels import attention_triton as at
    from tenk.kernels import moe
    from tenk.kernels.testing import capture_cuda_graph, make_moe_case, rel_err

    for impl in ("grouped_mm", "triton"):
        c = make_moe_case(256, 2048, 768, 128, 8, dtype=BF16, device=DEV, seed=1)
        out = torch.empty_like(c.x)
        run = lambda: moe.fused_moe(c.x, c.w13, c.w2, c.topk_weights, c.topk_ids, out=out, impl=impl)
        graph = capture_cuda_graph(run)
        d = make_moe_case(256, 2048, 768, 128, 8, dtype=BF16, device=DEV, seed=2, drop_fraction=0.1)
        c.x.copy_(d.x), c.topk_ids.copy_(d.topk_ids), c.topk_weights.copy_(d.topk_weights)
        graph.replay()
        record_check(f"cuda graph fused_moe {impl}", rel_err(out, moe.fused_moe_ref(c.x, c.w13, c.w2, c.topk_weights,
                                                                                     c.topk_ids)), 1e-2)
        ms = bench_ms(graph.replay)
        record_time(f"fused_moe {impl} T=256 graph replay", ms, "ms", ms)
    del at


# ---------------------------------------------------------------- main

SECTIONS = [("small_ops", small_ops), ("kv_store", kv_store), ("attention", attention),
            ("fused_moe", fused_moe), ("cuda_graphs", cuda_graphs)]


def run_sections(only: str, errors: dict) -> None:
    for name, section in SECTIONS:
        if only not in name or (SMOKE and name == "cuda_graphs"):
            continue
        t = time.time()
        try:
            section()
        except Exception:  # one broken section must not hide the others' numbers
            errors[name] = traceback.format_exc()
            print(f"[{name}] FAILED\n{errors[name]}", file=sys.stderr)
        if not SMOKE:
            torch.cuda.empty_cache()
        print(f"[{name}] {time.time() - t:.1f} s", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the sections whose name contains this")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny shapes, no graphs")
    args = parser.parse_args()
    global SMOKE, DEV
    if args.smoke:
        SMOKE, DEV = True, "cpu"
    elif not torch.cuda.is_available():
        print("kernels_gpu.py needs a CUDA GPU (or --smoke on CPU)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a bare checkout too
    import triton

    started = time.time()
    errors: dict[str, str] = {}
    interpreter = contextlib.nullcontext()
    if SMOKE:
        from tenk.kernels.interpret import triton_interpreter

        interpreter = triton_interpreter()
    with interpreter:
        run_sections(args.only, errors)

    result = {
        "device": torch.cuda.get_device_name() if not SMOKE else "cpu (Triton interpreter, smoke shapes)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "host": platform.node(),
        "seconds": round(time.time() - started, 1),
        "checks": CHECKS,
        "timings": TIMINGS,
        "errors": errors,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / ("kernels_smoke.json" if SMOKE else "kernels_gpu.json")
    out_file.write_text(json.dumps(result, indent=1))

    print(f"\n{result['device']}  torch {result['torch']}  triton {result['triton']}  {result['seconds']} s")
    print(f"{'check':<48} {'rel_err':>10} {'tol':>7}  ok")
    for c in CHECKS:
        print(f"{c['name']:<48} {c['rel_err']:>10.2e} {c['tol']:>7.0e}  {'ok' if c['ok'] else 'FAIL'}")
    print(f"\n{'timing':<52} {'ms':>9} {'rate':>14}")
    for t in TIMINGS:
        extra = f" {t['tflops']} TFLOP/s" if "tflops" in t else ""
        print(f"{t['name']:<52} {t['ms']:>9.4f} {t['value']:>9.3g} {t['unit']}{extra}")
    for name in errors:
        print(f"section {name} FAILED (traceback in the JSON)")
    print(f"\nwrote {out_file}")
    return 0 if all(c["ok"] for c in CHECKS) and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
