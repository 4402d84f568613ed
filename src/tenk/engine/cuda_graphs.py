"""CUDA graphs for decode-only steps.

A decode step is one token per sequence; at a few hundred sequences the GPU time of a MoE
forward is short enough that launching its kernels one by one from Python costs as much as
running them. So the model's decode forward is captured once per batch size in
graph_batch_sizes (1, 2, 4, 8, then every 16 up to
min(max_num_seqs, max_cudagraph_capture_size)) over static input buffers; a step copies its inputs into
the buffers of the smallest captured size that fits, pads the rest, and replays.

Padded rows write nowhere (slot -1) and attend over one token of block 0, so they stay finite
and never touch a live sequence's cache. The captured attention sees `max_seqlen_k =
max_model_len` and `decode_only=True`; its host lists are placeholders (a kernel inside a graph
must read lengths from the device tensors)."""

from __future__ import annotations

import logging

import torch

from tenk.engine.batch import StepBatch
from tenk.kernels.attention import AttentionMetadata

logger = logging.getLogger(__name__)


MAX_GRAPH_BATCH = 512  # default of max_cudagraph_capture_size: larger decode batches run eagerly


def graph_batch_sizes(max_num_seqs: int, max_capture: int = MAX_GRAPH_BATCH) -> list[int]:
    top = min(max_num_seqs, max_capture)
    sizes = [1, 2, 4, 8] + list(range(16, top + 16, 16))
    return sorted({min(s, top) for s in sizes})


def capture_each(sizes, forward, graphs: dict, pool=None):
    """graphs[size] = a CUDA graph of forward(size), for each size, largest first so the smaller
    graphs reuse the pool the largest sized; each runs once eagerly first (its kernels compile
    outside the capture). Returns the pool (a new one if `pool` is None)."""
    for size in sorted(sizes, reverse=True):
        forward(size)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool):
            forward(size)
        if pool is None:
            pool = graph.pool()
        graphs[size] = graph
    torch.cuda.synchronize()
    return pool


class CudaGraphRunner:
    def __init__(self, model, max_num_seqs: int, max_model_len: int, block_size: int, hidden_size: int,
                 dtype: torch.dtype, device: torch.device, max_capture: int = MAX_GRAPH_BATCH):
        self.model = model
        self.sizes = graph_batch_sizes(max_num_seqs, max_capture)
        max_bs = self.sizes[-1]
        max_blocks = (max_model_len + block_size - 1) // block_size
        self.max_model_len = max_model_len
        self.input_ids = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((max_bs,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(max_bs, dtype=torch.int32, device=device)
        self.cu_seqlens_q = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_bs, max_blocks, dtype=torch.int32, device=device)
        self.outputs = torch.zeros(max_bs, hidden_size, dtype=dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            cu_seqlens_q=self.cu_seqlens_q[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            slot_mapping=self.slot_mapping[:bs],
            block_tables=self.block_tables[:bs],
            max_seqlen_q=1,
            max_seqlen_k=self.max_model_len,
            cu_seqlens_q_cpu=list(range(bs + 1)),
            seq_lens_cpu=[1] * bs,
            decode_only=True,
        )

    @torch.inference_mode()
    def capture(self, pool=None) -> None:
        """Capture every batch size into `pool` (the mixed-step graphs', when there are any)."""

        def forward(bs: int) -> None:
            self.outputs[:bs] = self.model(self.input_ids[:bs], self.positions[:bs], self._meta(bs))

        self.pool = capture_each(self.sizes, forward, self.graphs, pool)
        logger.info("captured CUDA graphs for decode batch sizes %s", self.sizes)

    def can_run(self, batch: StepBatch) -> bool:
        return bool(self.graphs) and batch.meta.decode_only and batch.num_tokens <= self.sizes[-1]

    def run(self, batch: StepBatch) -> torch.Tensor:
        n = batch.num_tokens
        bs = next(s for s in self.sizes if s >= n)
        width = batch.meta.block_tables.shape[1]
        self.input_ids[:n].copy_(batch.input_ids, non_blocking=True)
        self.positions[:n].copy_(batch.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(batch.meta.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(batch.meta.seq_lens, non_blocking=True)
        self.block_tables[:n, :width].copy_(batch.meta.block_tables, non_blocking=True)
        if bs > n:
            self.slot_mapping[n:bs].fill_(-1)
            self.seq_lens[n:bs].fill_(1)
            self.block_tables[n:bs, 0].zero_()
        self.graphs[bs].replay()
        return self.outputs[:n]
