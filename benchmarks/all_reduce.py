"""Latency of one TP all-reduce at decode sizes: NCCL (torch.distributed) against the one-shot
symmetric-memory all-reduce (tenk.parallel.symm_all_reduce), each replayed from a CUDA graph of
`--calls` all-reduces, as a decode step replays them.

    python benchmarks/all_reduce.py --ranks 2 --hidden 3072 --tokens 1,16,64,256,1024 --out $OUT/all_reduce.json

One process per GPU. Each row: tokens x hidden bf16 values, microseconds per all-reduce for each
path, and whether the two paths gave the same sums. On a machine without GPUs it runs gloo on CPU
(eager, no symmetric memory), which only checks the plumbing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _time(fn, calls: int, graphs: bool, reps: int = 20) -> float:
    """Microseconds per call of fn, over reps replays of `calls` calls."""
    if graphs:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        run = graph.replay
    else:

        def run():
            for _ in range(calls):
                fn()

    run()
    sync = torch.cuda.synchronize if graphs else (lambda: None)
    sync()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(reps):
        run()
    sync()
    return (time.perf_counter() - t) / (reps * calls) * 1e6


def worker(rank: int, args, port: int, queue) -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.ranks)  # fmt: skip
    symm = None
    if cuda:
        from tenk.parallel.symm_all_reduce import SymmMemAllReduce

        symm = SymmMemAllReduce(dist.group.WORLD, device)
    rows = []
    for t in args.tokens:
        g = torch.Generator(device="cpu").manual_seed(rank * 1000 + t)
        x0 = torch.randn(t, args.hidden, generator=g).to(torch.bfloat16).to(device)
        ref = x0.clone()
        dist.all_reduce(ref)
        row = {"tokens": t, "bytes": x0.numel() * 2}
        x = x0.clone()
        row["nccl_us" if cuda else "gloo_us"] = _time(lambda: dist.all_reduce(x), args.calls, cuda)
        if symm is not None and x0.numel() * 2 <= symm.buffer.numel() * 2:
            y = x0.clone()
            assert symm(y)
            row["same_sums"] = bool(torch.equal(y, ref))
            row["symm_one_shot_us"] = _time(lambda: symm(x), args.calls, True)
        rows.append(row)
    if rank == 0:
        queue.put(rows)
    dist.barrier()
    symm = None
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--tokens", default="1,16,64,256,1024")
    ap.add_argument("--calls", type=int, default=62, help="all-reduces per graph (one per layer)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    args.tokens = [int(t) for t in args.tokens.split(",")]
    if torch.cuda.is_available() and torch.cuda.device_count() < args.ranks:
        raise SystemExit(f"--ranks {args.ranks} needs that many GPUs, {torch.cuda.device_count()} visible")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args, port, queue)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    rows = queue.get(timeout=600)
    for p in procs:
        p.join(120)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (gloo)"
    result = {"benchmark": "all_reduce", "device": name, "ranks": args.ranks, "hidden": args.hidden,
              "calls_per_graph": args.calls, "torch": torch.__version__, "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1))
    for r in rows:
        print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    print(f"wrote {args.out}")
    return 0 if all(p.exitcode == 0 for p in procs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
