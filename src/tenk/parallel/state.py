"""Tensor-parallel group state. Layers ask here for their rank and reduce through here, so a
model built with tp_size=1 never touches torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist

_TP_GROUP: dist.ProcessGroup | None = None
_TP_RANK = 0
_TP_SIZE = 1


_FAST_ALL_REDUCE = None  # a SymmMemAllReduce (parallel/symm_all_reduce.py), or None: NCCL / gloo only


def set_tp_group(group: dist.ProcessGroup | None, rank: int, size: int, fast_all_reduce=None) -> None:
    global _TP_GROUP, _TP_RANK, _TP_SIZE, _FAST_ALL_REDUCE
    _TP_GROUP, _TP_RANK, _TP_SIZE, _FAST_ALL_REDUCE = group, rank, size, fast_all_reduce


def get_tp_rank() -> int:
    return _TP_RANK


def get_tp_size() -> int:
    return _TP_SIZE


def tp_all_reduce(x: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if _TP_SIZE == 1:
        return x
    if _FAST_ALL_REDUCE is not None and op == dist.ReduceOp.SUM and _FAST_ALL_REDUCE(x):
        return x
    dist.all_reduce(x, op=op, group=_TP_GROUP)
    return x


def tp_broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In place: every rank's `x` becomes rank `src`'s (the engine's sampled tokens)."""
    if _TP_SIZE == 1:
        return x
    dist.broadcast(x, src=src, group=_TP_GROUP)
    return x


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate each rank's slice along `dim` (vocab-parallel logits)."""
    if _TP_SIZE == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_TP_SIZE)]
    dist.all_gather(parts, x.contiguous(), group=_TP_GROUP)
    return torch.cat(parts, dim=dim)


def divide(n: int, d: int, what: str = "size") -> int:
    if n % d:
        from tenk.errors import ConfigError

        raise ConfigError(f"{what} {n} is not divisible by tensor-parallel size {d}")
    return n // d
