"""One-shot all-reduce through PyTorch symmetric memory, for the small tensors of TP decode.

A decode step at TP=2 all-reduces a few hundred KB two or three times per layer. NCCL's
all-reduce costs about 10-20 µs a call even inside a CUDA graph, which over MiniMax-M2's 62
layers is milliseconds per step. A one-shot all-reduce copies the input into a buffer that every
rank maps over NVLink, and each rank sums all the copies in one kernel, which vLLM and SGLang do
for the same reason. It needs P2P access between the GPUs, and never NVLink multicast:
TORCH_SYMM_MEM_DISABLE_MULTICAST stays 1.

Opt-in with TENK_SYMM_MEM_ALL_REDUCE=1 until it is measured. Tensors it cannot serve (not bf16,
not contiguous, larger than the buffer) go to NCCL as before.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

ENV = "TENK_SYMM_MEM_ALL_REDUCE"
MAX_BYTES = 8 << 20  # one decode step's hidden states at 1,024 sequences x 4,096 bf16 values


class SymmMemAllReduce:
    def __init__(self, group: dist.ProcessGroup, device: torch.device, max_bytes: int = MAX_BYTES):
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = group.group_name
        self.buffer = symm_mem.empty(max_bytes // 2, dtype=torch.bfloat16, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)

    def __call__(self, x: torch.Tensor) -> bool:
        """Sum `x` over the ranks in place; False (nothing done) when `x` is not for this path."""
        if x.dtype != torch.bfloat16 or not x.is_contiguous() or x.numel() > self.buffer.numel():
            return False
        buf = self.buffer[: x.numel()]
        buf.copy_(x.view(-1))
        torch.ops.symm_mem.one_shot_all_reduce_out(buf, "sum", self.group_name, x.view(-1))
        return True


def maybe_symm_all_reduce(group: dist.ProcessGroup, device: torch.device) -> SymmMemAllReduce | None:
    """The one-shot all-reduce when TENK_SYMM_MEM_ALL_REDUCE=1 on CUDA and it can be set up;
    None otherwise (NCCL does every all-reduce)."""
    if os.environ.get(ENV) != "1" or device.type != "cuda":
        return None
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    try:
        return SymmMemAllReduce(group, device)
    except Exception as exc:  # no P2P between these GPUs, an older torch...: NCCL it is
        logger.warning("symmetric-memory all-reduce unavailable (%s); using NCCL", exc)
        return None
