"""The floor under issue 7's decode bandwidth targets, measured beside the NVFP4 MoE.

How fast a plain read moves the bytes a decode-sized NVFP4 MoE call must read, timed exactly as
moe_kernels.py times the MoE, in the same run.

    python benchmarks/read_floor.py [--models qwen3,minimax] [--tokens 1,16,256] [--out DIR]
    python benchmarks/read_floor.py --smoke   # CPU, Triton interpreter, tiny shapes: proves the script runs

For each model and token count, moe_kernels.py's routing (same seeds) gives the experts the batch
touches, and so the bytes the MoE reads in its two dependent weight passes: w1|w3 (codes, E4M3
scales, globals, the activations) and then w2. The floor reads as many bytes, from contiguous
buffers, with a streaming read kernel (the fastest of a small launch grid for each size, timed
alone), in two launches that depend on each other the way w2 depends on w1|w3 (programmatic
dependent launch or without it, whichever is faster). Timed like the MoE: a CUDA-graph replay with L2 flushed
(isolated), and one graph of CHAIN such pairs on their own buffers divided by CHAIN (in a chain).
The NVFP4 MoE with the shipped config is timed beside it in the same run.

The floor is the best the read launches tried here manage, not a proof of what no kernel can do,
but it is generous to any MoE: it does no dequantization, no MMA and no routing, and reads one
contiguous run per launch. Also timed: one launch reading all the bytes (what a single fused
kernel could at most do). A target above both floors is out of reach of any kernel tried here
under this timing; the MoE's share of the two-launch floor says how much of what its structure
allows it already takes.

Writes read_floor_<gpu>.json to $OUT (or benchmarks/results/). Budget: ~2 minutes on an H100.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a bare checkout too
sys.path.insert(0, str(Path(__file__).resolve().parent))

from moe_kernels import (  # noqa: E402
    CHAIN, COPY_TBPS, SHAPES, SMOKE_SHAPES, TARGET_BW, Shape, Timer, bench_parser, bytes_to_read, interpreter_if,
    lacks_gpu, make_experts, make_routing, write_result,
)
from tenk.kernels._common import use_pdl  # noqa: E402
from tenk.kernels import _tiles  # noqa: E402  (by module: the interpreter twins its functions in place)
from tenk.kernels._triton import tl, triton  # noqa: E402

TOKENS = (1, 16, 256)
WORD = 4  # the read kernel loads int32 words
# the read kernel's launch grid: programs per SM, words per program and loop step, warps
PROGRAMS_PER_SM = (1, 2, 4, 8)
BLOCKS = (1024, 4096)
WARPS = (4, 8)


@triton.jit(do_not_specialize=["n"])
def _read_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Program p reads words [p*BLOCK, (p+1)*BLOCK), then strides over the grid; one xor per
    program is stored so the loads stay live."""
    _tiles.wait_prior_grid(PDL)
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    acc = tl.zeros([BLOCK], tl.int32)
    for start in range(pid * BLOCK, n, step):
        offs = start + tl.arange(0, BLOCK)
        acc ^= tl.load(x_ptr + offs, mask=offs < n, other=0)
    tl.store(out_ptr + pid, tl.xor_sum(acc, 0))


def read_launch(buf: torch.Tensor, out: torch.Tensor, cfg: tuple[int, int, int], pdl: bool | None = None):
    """One launch reading all of buf (int32) with cfg = (programs, BLOCK, warps); out holds >= programs
    ints. pdl None: programmatic dependent launch where the MoE's kernels use it."""
    programs, block, warps = cfg
    pdl = use_pdl(buf.device) if pdl is None else pdl and use_pdl(buf.device)
    kernel = _read_kernel
    if buf.device.type != "cuda":  # --smoke: interpreted (triton_interpreter() twins tenk.kernels' only)
        from triton.runtime.interpreter import InterpretedFunction

        kernel = InterpretedFunction(_read_kernel.fn)
    grid = (programs,)
    return lambda: kernel[grid](buf, out, buf.numel(), BLOCK=block, PDL=pdl, num_warps=warps, launch_pdl=pdl)


def launch_grid(device) -> list[tuple[int, int, int]]:
    if device.type != "cuda":
        return [(2, 1024, 1)]
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return [(k * sms, b, w) for k in PROGRAMS_PER_SM for b in BLOCKS for w in WARPS]


def random_words(nbytes: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(-(2**31), 2**31 - 1, (max(1, nbytes // WORD),), generator=g, device=device, dtype=torch.int32)


def xor_all(t: torch.Tensor) -> int:
    t = t.clone()
    while t.numel() > 1:
        half = t.numel() // 2
        head = t[:half] ^ t[half:2 * half]
        t = torch.cat([head, t[2 * half:]])
    return int(t[0])


def best_config(nbytes: int, timer: Timer, device, tried: dict, checks: list) -> tuple[tuple[int, int, int], float]:
    """The fastest read launch for nbytes, alone in a graph (cached by size); each launch config
    is first checked to read every word (the xor of its programs' xors is the buffer's)."""
    if nbytes in tried:
        return tried[nbytes]
    buf = random_words(nbytes, device)
    out = torch.empty(8 * 1024, dtype=torch.int32, device=device)
    want, best = xor_all(buf), None
    for cfg in launch_grid(device):
        fn = read_launch(buf, out, cfg)
        fn()
        ok = xor_all(out[: cfg[0]]) == want
        checks.append({"bytes": nbytes, "config": cfg, "reads_every_word": ok})
        if not ok:
            continue
        ms = time_graph(timer, fn)
        if best is None or ms < best[1]:
            best = (cfg, ms)
    if best is None:
        raise RuntimeError(f"no read launch read all {nbytes} bytes")
    tried[nbytes] = best
    return best


def time_graph(timer: Timer, fn) -> float:
    """moe_kernels.py's graph replay timing (eager in --smoke runs, which have no graphs)."""
    return timer.graph(fn) if not timer.smoke else timer.eager(fn)


def floor_row(key: str, shape: Shape, tokens: int, packed, timer: Timer, device, tried: dict, checks: list) -> dict:
    from tenk.kernels.configs.nvfp4 import moe_config
    from tenk.kernels.nvfp4_moe import nvfp4_fused_moe

    def split(ids) -> tuple[int, int]:
        """(bytes of the w1|w3 pass incl. the activations, bytes of the w2 pass)."""
        weights, act = bytes_to_read(shape, ids, tokens, nvfp4=True)
        return weights * 2 // 3 + act, weights // 3

    x, tw, ids = make_routing(shape, tokens, device, seed=tokens)
    batches = [make_routing(shape, tokens, device, seed=1000 * tokens + j) for j in range(CHAIN)]
    sizes = {"iso": [split(ids)], "chain": [split(i) for _, _, i in batches]}  # CHAIN calls, own bytes each
    out = torch.empty(8 * 1024, dtype=torch.int32, device=device)

    def reads(parts: list[int], pdl: bool):
        """Dependent launches reading parts[i] bytes each, from their own buffers."""
        launches = [read_launch(random_words(n, device, i), out, best_config(n, timer, device, tried, checks)[0], pdl)
                    for i, n in enumerate(parts)]
        return lambda: [f() for f in launches]

    # two launches (w2's pass waits for w1|w3's, as in the MoE) and, the most a single fused kernel
    # could do, one launch of all the bytes; with PDL and without (early-resident successor CTAs
    # can crowd a long predecessor), the better of the two is the floor
    floor = {}
    for structure in ("two_launches", "one_launch"):
        for how, calls in sizes.items():
            parts = [p for b in calls for p in (b if structure == "two_launches" else (sum(b),))]
            times = {pdl: time_graph(timer, reads(parts, pdl)) / len(calls) for pdl in (True, False)}
            floor[f"{structure}_{how}_ms"] = min(times.values())
            floor[f"{structure}_{how}_ms_pdl_nopdl"] = [times[True], times[False]]
            if device.type == "cuda":
                torch.cuda.empty_cache()

    cfg = moe_config(tokens, shape.experts, shape.hidden, shape.inter, shape.top_k, x.device)
    y = torch.empty_like(x)
    moe_iso = time_graph(timer, lambda: nvfp4_fused_moe(x, *packed, tw, ids, out=y, config=cfg))
    outs = [torch.empty_like(b[0]) for b in batches]
    moe_chain = time_graph(timer, lambda: [nvfp4_fused_moe(bx, *packed, btw, bids, out=o, config=cfg)
                                           for (bx, btw, bids), o in zip(batches, outs)]) / CHAIN
    nbytes = {how: sum(sum(b) for b in calls) / len(calls) for how, calls in sizes.items()}
    target = TARGET_BW * COPY_TBPS
    row = {"model": key, "shape": shape.__dict__, "tokens": tokens, "bytes_w13": sizes["iso"][0][0],
           "bytes_w2": sizes["iso"][0][1], "bytes_in_chain": nbytes["chain"], "target_tbps": target,
           "moe_ms": moe_iso, "moe_layer_ms": moe_chain, **floor}
    for how, moe_ms in (("iso", moe_iso), ("chain", moe_chain)):
        row[f"moe_{how}_tbps"] = nbytes[how] / moe_ms / 1e9
        for structure in ("two_launches", "one_launch"):
            row[f"{structure}_{how}_tbps"] = nbytes[how] / floor[f"{structure}_{how}_ms"] / 1e9
        # what the MoE's structure allows, how much of it the MoE takes, and whether any kernel
        # tried here (even one launch) moves the bytes at the target rate
        row[f"moe_{how}_share_of_floor"] = floor[f"two_launches_{how}_ms"] / moe_ms
        row[f"target_reachable_{how}"] = max(row[f"two_launches_{how}_tbps"], row[f"one_launch_{how}_tbps"]) >= target
    return row


def format_row(r: dict) -> str:
    parts = [f"{r['model']:8s} T={r['tokens']:4d} {(r['bytes_w13'] + r['bytes_w2']) / 1e6:7.1f} MB"]
    for how in ("iso", "chain"):
        parts.append(f"{how}: floor {r[f'two_launches_{how}_tbps']:4.2f} TB/s (one launch {r[f'one_launch_{how}_tbps']:4.2f}),"
                     f" moe {r[f'moe_{how}_tbps']:4.2f} = {r[f'moe_{how}_share_of_floor']:.2f} of the floor,"
                     f" target {r['target_tbps']:.2f} reachable {r[f'target_reachable_{how}']}")
    return " | ".join(parts)


def main() -> int:
    args = bench_parser(__doc__, TOKENS).parse_args()
    if lacks_gpu(args, "read_floor.py"):
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    tokens = (1, 16) if args.smoke else tuple(int(t) for t in args.tokens.split(","))
    timer = Timer(args.smoke)
    started = time.time()
    rows, checks, errors, tried = [], [], {}, {}
    with interpreter_if(args.smoke):
        for key in args.models.split(","):
            try:
                packed, _ = make_experts(shapes[key], device, dense=False)
                for t in tokens:
                    rows.append(floor_row(key, shapes[key], t, packed, timer, device, tried, checks))
                    print(format_row(rows[-1]), flush=True)
                del packed
            except Exception:  # one broken model must not hide the other's numbers
                errors[key] = traceback.format_exc()
                print(f"[{key}] FAILED\n{errors[key]}", file=sys.stderr)
            if not args.smoke:
                torch.cuda.empty_cache()
    result, path = write_result("read_floor", args.out, args.smoke, started, rows, checks, errors,
                                programs_per_sm=PROGRAMS_PER_SM, blocks=BLOCKS, warps=WARPS)
    print(f"wrote {path} in {result['seconds']} s")
    return 1 if errors or not rows or not all(c["reads_every_word"] for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
