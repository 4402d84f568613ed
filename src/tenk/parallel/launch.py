"""Joining a tensor-parallel group: NCCL on GPUs, gloo on CPU (so TP=2 runs on a laptop)."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from tenk.parallel.state import set_tp_group

logger = logging.getLogger(__name__)


def init_tp(
    rank: int,
    world_size: int,
    init_method: str | None = None,
    device: torch.device | str = "cpu",
    *,
    store: dist.Store | None = None,  # instead of init_method: a store the caller already joined
    timeout_s: float | None = None,  # how long a collective may wait for a peer; None: torch's default
) -> None:
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    if store is not None:
        kwargs["store"] = store
    else:
        kwargs["init_method"] = init_method
    dist.init_process_group(backend, rank=rank, world_size=world_size, **kwargs)
    from tenk.parallel.symm_all_reduce import maybe_symm_all_reduce

    set_tp_group(dist.group.WORLD, rank, world_size, maybe_symm_all_reduce(dist.group.WORLD, device))


DESTROY_TIMEOUT_S = 20.0


def shutdown_tp() -> None:
    """Leave the TP group. NCCL's teardown is itself collective and can wait forever on a peer
    that is gone, so on GPUs it runs in a thread that is given up on after DESTROY_TIMEOUT_S."""
    set_tp_group(None, 0, 1)  # first: its symmetric-memory buffer must go before its group does
    if dist.is_initialized():
        if dist.get_backend() == "nccl":
            done = threading.Thread(target=dist.destroy_process_group, name="tenk-nccl-destroy", daemon=True)
            done.start()
            done.join(DESTROY_TIMEOUT_S)
            if done.is_alive():
                logger.warning("NCCL teardown did not finish in %.0f s; leaving it to process exit", DESTROY_TIMEOUT_S)
        else:
            dist.destroy_process_group()
