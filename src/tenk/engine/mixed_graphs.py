"""CUDA graphs for steps that are not plain decodes: prefill chunks, decodes mixed with them,
and decode batches above the decode graphs' sizes.

Launched from Python one kernel at a time, a step costs about 1.5 ms of host time a layer on a
MoE model (a Triton launch alone is 20-35 us of Python; step_profile_eager_h100.json), so a step
with a prefill chunk stays host-bound up to a few thousand tokens: 64 decodes of Qwen3-30B-A3B
took 89 ms eagerly for 9.8 ms of GPU work. So these steps replay a graph too, one per token
bucket (`mixed_graph_sizes`, quarter-octave steps up to max_num_batched_tokens): the step's T
tokens and B sequences are padded to the bucket's T_b tokens and B_b = min(max_num_seqs, T_b) + 1
sequences.

Attention needs no step's host values inside the graph: the prefill kernel's grid depends only on
T and B, and it reads lengths from device tensors. Padding: tokens T..T_b form one extra sequence
with an empty context (seq_len 0) and slot -1, so nothing is cached and the kernel writes its rows
as zeros (no key to attend); the sequences after it have no tokens and their tiles exit at once.
The captured forward sees max_seqlen_q = T_b (the tiles of a long prefill) and placeholder host
lists. Rows past T compute on zeros and are never read.

Every graph shares one memory pool with the decode graphs, captured largest first: the largest is
a forward of max_num_batched_tokens tokens, the activation peak the KV cache was sized to leave
free, so the pool takes memory that eager steps would have used."""

from __future__ import annotations

import logging
import time

import torch

from tenk.engine.batch import StepBatch
from tenk.engine.cuda_graphs import capture_each
from tenk.kernels.attention import AttentionMetadata

logger = logging.getLogger(__name__)


def mixed_graph_sizes(max_tokens: int) -> list[int]:
    """16, 32, ..., 128, then four sizes an octave (160, 192, 224, 256, 320, ...), up to and
    including max_tokens: a step pads at most 15 tokens up to 128, under a quarter of its tokens above."""
    sizes, s = [], 16
    while s < max_tokens:
        sizes.append(s)
        step = 16 if s < 128 else 1 << (s.bit_length() - 3)
        s += step
    sizes.append(max_tokens)
    return sizes


class MixedGraphRunner:
    def __init__(self, model, max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int, block_size: int,
                 hidden_size: int, dtype: torch.dtype, device: torch.device, capture_graphs: bool = True):
        self.model = model
        self.sizes = mixed_graph_sizes(max_num_batched_tokens)
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.capture_graphs = capture_graphs  # False: replay = the same padded forward, eagerly (CPU tests)
        max_t = self.sizes[-1]
        max_b = self.num_seqs(max_t)
        max_blocks = (max_model_len + block_size - 1) // block_size
        self.input_ids = torch.zeros(max_t, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_t, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((max_t,), -1, dtype=torch.int64, device=device)
        self.cu_seqlens_q = torch.zeros(max_b + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(max_b, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_b, max_blocks, dtype=torch.int32, device=device)
        self.outputs = torch.zeros(max_t, hidden_size, dtype=dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None

    def num_seqs(self, tokens: int) -> int:
        """Sequences a bucket's graph is captured for: the most a step of that many tokens can
        hold, plus the padding sequence."""
        return min(self.max_num_seqs, tokens) + 1

    def bucket(self, num_tokens: int) -> int:
        return next(s for s in self.sizes if s >= num_tokens)

    def _meta(self, tokens: int, host_lists: tuple[list[int], list[int]] | None = None) -> AttentionMetadata:
        b = self.num_seqs(tokens)
        cu, lens = host_lists or ([0] * (b + 1), [0] * b)
        return AttentionMetadata(
            cu_seqlens_q=self.cu_seqlens_q[: b + 1],
            seq_lens=self.seq_lens[:b],
            slot_mapping=self.slot_mapping[:tokens],
            block_tables=self.block_tables[:b],
            max_seqlen_q=tokens,
            max_seqlen_k=self.max_model_len,
            cu_seqlens_q_cpu=cu,  # read only by the CPU reference (capture_graphs=False)
            seq_lens_cpu=lens,
            decode_only=False,
        )

    def _forward(self, tokens: int, host_lists: tuple[list[int], list[int]] | None = None) -> None:
        meta = self._meta(tokens, host_lists)
        self.outputs[:tokens] = self.model(self.input_ids[:tokens], self.positions[:tokens], meta)

    @torch.inference_mode()
    def capture(self, pool=None) -> None:
        """Capture every bucket, largest first, into `pool` (None: a new one, kept as self.pool)."""
        start = time.perf_counter()
        self.pool = capture_each(self.sizes, self._forward, self.graphs, pool)
        logger.info("captured CUDA graphs for mixed steps of %s tokens in %.1f s", self.sizes,
                    time.perf_counter() - start)

    def can_run(self, batch: StepBatch) -> bool:
        return (bool(self.graphs) or not self.capture_graphs) and batch.num_tokens <= self.sizes[-1]

    def run(self, batch: StepBatch) -> torch.Tensor:
        n, meta = batch.num_tokens, batch.meta
        tokens = self.bucket(n)
        b = meta.seq_lens.shape[0]
        num_seqs = self.num_seqs(tokens)
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(batch.input_ids, non_blocking=True)
        self.positions[:n].copy_(batch.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.cu_seqlens_q[: b + 1].copy_(meta.cu_seqlens_q, non_blocking=True)
        self.seq_lens[:b].copy_(meta.seq_lens, non_blocking=True)
        self.block_tables[:b, :width].copy_(meta.block_tables, non_blocking=True)
        if tokens > n:
            self.input_ids[n:tokens].zero_()
            self.positions[n:tokens].zero_()
            self.slot_mapping[n:tokens].fill_(-1)
        # sequence b holds the padding tokens (empty context: zero rows); the rest hold none
        self.cu_seqlens_q[b + 1 : num_seqs + 1].fill_(tokens)
        self.seq_lens[b:num_seqs].zero_()
        if self.capture_graphs:
            self.graphs[tokens].replay()
        else:
            pad = num_seqs - b
            self._forward(tokens, (meta.cu_seqlens_q_cpu + [tokens] * pad, meta.seq_lens_cpu + [0] * pad))
        return self.outputs[:n]
