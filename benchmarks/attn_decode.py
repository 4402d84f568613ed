"""Decode attention on the GPU at serving shapes: launch configs, and one tree's kernel against another's.

    python benchmarks/attn_decode.py sweep [--out DIR]    # launch configs against the shipped one
    python benchmarks/attn_decode.py compare --against OLD/src [--name NAME]  # this tree's kernel vs another's

sweep: the decode kernel launched directly over block_n 32-128, 2-8 warps, 2-4 stages and register
caps 96 / 128, Qwen3-30B-A3B heads, fp8 and bf16 KV, one do_bench each (the query's own key is
not stored first, so bf16 outputs hold NaN: speed only). Writes attn_decode_launch_sweep_<gpu>.json.
compare: this tree's attention_triton against another source tree's (e.g. `git archive REV src`
unpacked), both through their production launchers, fp8 KV, Qwen3-30B-A3B (32/4) and MiniMax-M2
(48/8) heads, 32-1,024 sequences of 400 tokens and 64-256 of 2,048, do_bench medians of
--rounds alternated rounds (3), each output's max abs error against the fp32 reference (up to 256 x 2,048
keys) and the two outputs' max abs difference. Writes <NAME>_<gpu>.json (default attn_decode_compare).
With --prefill the same for the prefill kernel: prompts of 1,024-16,384 tokens, 2,048-token chunks
after 6,144 cached ones, and 256 two-token chunks of 400-token contexts (TFLOP/s of the causal matmuls).
Budget: about 2 minutes each on an H100.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tenk.kernels import attention_triton as at  # noqa: E402
from tenk.kernels.testing import make_attention_case  # noqa: E402


def _gpu_tag() -> str:
    name = torch.cuda.get_device_name()
    return "h200" if "H200" in name else "h100" if "H100" in name else name.split()[-1].lower()


_HEADS = [(32, 4), (48, 8)]  # Qwen3-30B-A3B and MiniMax-M2 heads
_CASES = [(hq, hkv, [(ctx, 1)] * b) for hq, hkv in _HEADS for b, ctx in
          [(32, 400), (64, 400), (96, 400), (128, 400), (192, 400), (256, 400), (512, 400), (1024, 400),
           (64, 2048), (128, 2048), (256, 2048)]]
# --prefill: whole prompts, chunks after a cached prefix, and two-token chunks (16-row tiles)
_PREFILL_CASES = [(hq, hkv, seqs) for hq, hkv in _HEADS for seqs in
                  [[(1024, 1024)] * 8, [(4096, 4096)] * 2, [(16384, 16384)], [(8192, 2048)] * 2, [(400, 2)] * 256]]


def _load_other(src: str):
    """attention_triton.py of another source tree, as its own module (its imports resolve to this tree)."""
    path = Path(src) / "tenk" / "kernels" / "attention_triton.py"
    spec = importlib.util.spec_from_file_location("tenk.kernels.attention_triton_against", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # a tenk.kernels module like the others (tenk's interpreter finds it there)
    spec.loader.exec_module(mod)
    return mod


def _flops(hq: int, seqs: list) -> float:
    """The two attention matmuls over the keys each query sees (causal), head_dim 128."""
    return sum(4 * hq * 128 * (q * (ctx - q) + q * (q + 1) / 2) for ctx, q in seqs)


def compare(against: str, rounds: int, prefill: bool = False) -> dict:
    import triton

    mods = {"now": at, "against": _load_other(against)}
    rows = []
    for hq, hkv, seqs in _PREFILL_CASES if prefill else _CASES:
        b, (ctx, q_len) = len(seqs), seqs[0]
        case = make_attention_case(seqs, hq, hkv, 128, dtype=torch.bfloat16,
                                   cache_dtype=torch.float8_e4m3fn, device="cuda", kv_scale=0.05, seed=0)
        kc, vc = case.k_cache.clone(), case.v_cache.clone()
        at.store_kvcache_triton(case.k, case.v, kc, vc, case.meta.slot_mapping, case.k_scale, case.v_scale)
        ref = None
        if sum(c * q for c, q in seqs) <= 2 * 4096 * 4096:  # the fp32 reference stays affordable up to here
            ref = at.paged_attention_scaled_ref(case.q.float(), None, None, kc, vc, case.meta, case.scale,
                                                k_scale=case.k_scale, v_scale=case.v_scale)
        times, outs = {n: [] for n in mods}, {}
        for _ in range(rounds):
            for n, mod in mods.items():
                out = torch.empty_like(case.q)

                def call(mod=mod, out=out):
                    mod.paged_attention_triton(case.q, None, None, kc, vc, case.meta, case.scale,
                                               k_scale=case.k_scale, v_scale=case.v_scale, out=out,
                                               mixed_decodes=not prefill)

                call()
                torch.cuda.synchronize()
                outs[n] = out
                times[n].append(triton.testing.do_bench(call, warmup=10, rep=50))
        med = {n: statistics.median(v) for n, v in times.items()}
        err = {n: None if ref is None else (o.float() - ref).abs().max().item() for n, o in outs.items()}
        diff = (outs["now"].float() - outs["against"].float()).abs().max().item()
        kv_bytes, flops = b * ctx * hkv * 128 * 2, _flops(hq, seqs)
        rate = f"{flops / med['now'] / 1e9:.0f}TFLOP/s" if prefill else f"{kv_bytes / med['now'] / 1e9:.2f}TB/s"
        print(f"heads {hq}/{hkv} b={b:5d} ctx={ctx:5d} q={q_len:5d} against {med['against']*1e3:8.1f}us "
              f"now {med['now']*1e3:8.1f}us {med['against']/med['now']:.3f}x {rate} err {err} diff {diff:.2e}",
              flush=True)
        rows.append({"q_heads": hq, "kv_heads": hkv, "batch": b, "context": ctx, "q_len": q_len, "kv_bytes": kv_bytes,
                     "flops": flops, "ms": times, "median_ms": med, "speedup_now_vs_against": med["against"] / med["now"],
                     "max_abs_err_vs_fp32_ref": err, "max_abs_diff_now_vs_against": diff})
    return {"against": against, "prefill": prefill, "rows": rows}


def _launch(case, out, block_n, warps, stages, maxnreg):
    """The production decode launch (one split) with this block_n, warps, stages and register cap."""
    kw = {"maxnreg": maxnreg} if maxnreg else {}
    at._decode(case.q, case.k_cache, case.v_cache, case.meta, out, case.scale * case.k_scale * at.LOG2E,
               case.v_scale, 1, block_n, num_warps=warps, num_stages=stages, **kw)


def sweep() -> dict:
    import triton

    hq, hkv = 32, 4
    variants = [(bn, w, s, r) for bn in (32, 64, 128) for (w, s, r) in
                [(4, 3, 0), (4, 4, 0), (4, 2, 0), (4, 3, 128), (4, 3, 96), (2, 3, 0), (8, 3, 0)]]
    rows = []
    for cache in (torch.float8_e4m3fn, torch.bfloat16):
        for bsz, ctx in [(64, 400), (256, 400), (512, 400), (1024, 400), (64, 2048), (256, 2048)]:
            if cache == torch.bfloat16 and (bsz, ctx) == (256, 2048):
                continue
            case = make_attention_case([(ctx, 1)] * bsz, hq, hkv, 128, dtype=torch.bfloat16, cache_dtype=cache,
                                       device="cuda", kv_scale=0.05 if cache != torch.bfloat16 else 1.0, seed=0)
            kv_bytes = bsz * ctx * hkv * 128 * 2 * case.k_cache.element_size()
            ref = torch.empty_like(case.q)
            _launch(case, ref, 64, 4, 3, 0)
            res = []
            for v in variants:
                out = torch.empty_like(case.q)
                try:
                    _launch(case, out, *v)
                    torch.cuda.synchronize()
                except Exception as e:  # a config that does not compile
                    res.append({"v": v, "error": str(e)[:120]})
                    continue
                err = (out.float() - ref.float()).abs().max().item()
                ms = triton.testing.do_bench(lambda: _launch(case, out, *v), warmup=10, rep=50)
                res.append({"v": v, "ms": ms, "err": err, "tbps": kv_bytes / ms / 1e9})
            ok = sorted([r for r in res if "ms" in r], key=lambda r: r["ms"])
            ship = next(r for r in res if tuple(r["v"]) == (64, 4, 3, 0))
            print(f"{str(cache)[6:]:14s} b={bsz:5d} ctx={ctx:5d} shipped {ship['ms']*1e3:7.1f}us "
                  f"{ship['tbps']:.2f}TB/s | " + " ".join(f"{r['v']}:{r['ms']*1e3:.1f}" for r in ok[:4]), flush=True)
            rows.append({"cache": str(cache), "batch": bsz, "ctx": ctx, "kv_bytes": kv_bytes, "results": res})
    return {"rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["sweep", "compare"])
    parser.add_argument("--against", help="compare: another tree's src folder")
    parser.add_argument("--name", default="attn_decode_compare", help="compare: the result file's name")
    parser.add_argument("--rounds", type=int, default=3, help="compare: alternated rounds")
    parser.add_argument("--prefill", action="store_true", help="compare: the prefill kernel's cases instead")
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("attn_decode.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    t0 = time.time()
    if args.what == "compare":
        if not args.against:
            parser.error("compare needs --against OLD/src")
        result, name = compare(args.against, args.rounds, args.prefill), args.name
    else:
        result, name = sweep(), "attn_decode_launch_sweep"
    path = Path(args.out) / f"{name}_{_gpu_tag()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                "triton": triton.__version__, **result, "seconds": time.time() - t0}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
