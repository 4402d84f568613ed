"""Joining a tensor-parallel group: NCCL on GPUs, gloo on CPU (so TP=2 runs on a laptop)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from tenk.parallel.state import set_tp_group


def init_tp(rank: int, world_size: int, init_method: str, device: torch.device | str = "cpu") -> None:
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    set_tp_group(dist.group.WORLD, rank, world_size)


def shutdown_tp() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    set_tp_group(None, 0, 1)
