"""Offline throughput: tenk's LLM.generate vs transformers' continuous batching, same card,
same workload (random prompts of --input-len tokens, --output-len tokens each, ignore_eos).

    python benchmarks/offline_throughput.py --preset qwen3-30b-a3b --num-prompts 1024 \
        --peer-num-prompts 256 --out benchmarks/results/offline_throughput_h100.json

Weights are random (`load_format="dummy"`, made on the GPU): speed does not depend on values.
Output tok/s = generated tokens / wall time of the whole generate call (prefill included).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n, length), generator=g).tolist()


def output_len_range(args) -> tuple[int, int]:
    """--output-len, or with --range-ratio R [L(1-R), L(1+R)] (vLLM's random dataset)."""
    lo = max(1, round(args.output_len * (1 - args.range_ratio)))
    return lo, max(lo, round(args.output_len * (1 + args.range_ratio)))


def output_lens(n: int, args) -> list[int]:
    """Uniform in output_len_range: requests then finish at different steps, so new prompts join
    running decodes."""
    lo, hi = output_len_range(args)
    g = torch.Generator().manual_seed(1)
    return torch.randint(lo, hi + 1, (n,), generator=g).tolist()


def run_tenk(model_dir: Path, prompts, args) -> dict:
    from tenk import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(
        str(model_dir), load_format="dummy", dtype=args.dtype, max_num_seqs=args.max_num_seqs,
        max_model_len=args.input_len + output_len_range(args)[1] + 16, gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_batched_tokens=args.max_num_batched_tokens, enforce_eager=args.enforce_eager,
        cudagraph_mode=args.cudagraph_mode, enable_prefix_caching=False, quantization=args.quantization,
        tensor_parallel_size=args.tensor_parallel_size, kv_cache_dtype=args.kv_cache_dtype,
    )
    startup = time.perf_counter() - t0
    extra = {"detokenize": False} if "detokenize" in SamplingParams.__dataclass_fields__ else {}
    params = [SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0, **extra) for n in output_lens(len(prompts), args)]
    llm.generate(prompt_token_ids=prompts[: min(len(prompts), 2 * args.max_num_seqs)], sampling_params=SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    wall = time.perf_counter() - t0
    gen = sum(len(o.outputs[0].token_ids) for o in outs)
    stats = llm.engine.get_stats()
    return {
        "engine": "tenk", "dtype": args.dtype, "quantization": args.quantization, "tensor_parallel_size": args.tensor_parallel_size, "num_prompts": len(prompts), "generated_tokens": gen,
        "wall_s": wall, "output_tok_s": gen / wall, "total_tok_s": (gen + sum(map(len, prompts))) / wall,
        "startup_s": startup, "kv_capacity_tokens": stats.kv_capacity_tokens, "num_preemptions": stats.num_preemptions,
        "max_num_seqs": args.max_num_seqs, "cudagraph_mode": args.cudagraph_mode, "enforce_eager": args.enforce_eager,
    }


def run_transformers_peer(model_dir: Path, prompts, args) -> dict:
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    t0 = time.perf_counter()
    model = None
    last_err = None
    for impl in ("paged|sdpa", "sdpa_paged", "sdpa"):
        try:
            with torch.device("cuda"):
                model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation=impl)
            break
        except Exception as exc:  # the name of the paged implementation moved between releases
            last_err = exc
    if model is None:
        raise RuntimeError(f"transformers could not build the model: {last_err}")
    model.eval()
    startup = time.perf_counter() - t0
    gen_cfg = GenerationConfig(max_new_tokens=args.output_len, min_new_tokens=args.output_len, do_sample=False,
                               eos_token_id=None, pad_token_id=0, max_batch_tokens=args.peer_max_batch_tokens)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        outs = model.generate_batch(inputs=prompts, generation_config=gen_cfg)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    gen = sum(len(o.generated_tokens) for o in outs.values())
    return {
        "engine": "transformers", "version": transformers.__version__, "attn_implementation": model.config._attn_implementation,
        "dtype": "bfloat16", "num_prompts": len(prompts), "generated_tokens": gen, "wall_s": wall,
        "output_tok_s": gen / wall, "startup_s": startup,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--num-layers", type=int, default=None)
    ap.add_argument("--num-prompts", type=int, default=1024)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--range-ratio", type=float, default=0.0, help="output lengths uniform in [L(1-R), L(1+R)]")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--kv-cache-dtype", default="auto", help="auto (= --dtype) | fp8 | fp8_e4m3")
    ap.add_argument("--tensor-parallel-size", "--tp", type=int, default=1)
    ap.add_argument("--quantization", default="none", help="none | nvfp4 | nvfp4-all | fp8 (weights made in that format)")
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--cudagraph-mode", default="full", help="full | full_decode_only (mixed and prefill steps eager)")
    ap.add_argument("--peer-num-prompts", type=int, default=256, help="0 skips the transformers peer")
    ap.add_argument("--peer-max-batch-tokens", type=int, default=None)
    ap.add_argument("--no-tenk", action="store_true", help="measure only the transformers peer")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from tenk.models.source import materialize_preset

    model_dir = materialize_preset(args.preset, args.num_layers)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompts = random_prompts(args.num_prompts, args.input_len, vocab, seed=0)
    result = {
        "benchmark": "offline_throughput", "preset": args.preset, "num_layers": args.num_layers,
        "input_len": args.input_len, "output_len": args.output_len, "range_ratio": args.range_ratio,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "python": sys.version.split()[0], "runs": [],
    }
    tenk_run = None
    if not args.no_tenk:
        tenk_run = run_tenk(model_dir, prompts, args)
        result["runs"].append(tenk_run)
        print(f"tenk {args.dtype}: {tenk_run['output_tok_s']:.0f} output tok/s ({tenk_run['generated_tokens']} tokens in {tenk_run['wall_s']:.1f} s)", flush=True)
    if args.peer_num_prompts > 0 and torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        try:
            peer = run_transformers_peer(model_dir, prompts[: args.peer_num_prompts], args)
        except Exception as exc:
            peer = {"engine": "transformers", "error": repr(exc)[:500]}
        result["runs"].append(peer)
        if "output_tok_s" in peer:
            print(f"transformers: {peer['output_tok_s']:.0f} output tok/s ({peer['generated_tokens']} tokens in {peer['wall_s']:.1f} s)")
            if tenk_run is not None:
                result["tenk_vs_peer"] = tenk_run["output_tok_s"] / peer["output_tok_s"]
                print(f"tenk / transformers = {result['tenk_vs_peer']:.1f}x")
        else:
            print(f"transformers peer failed: {peer['error']}")
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
