"""Pack one scheduled step into the flat tensors the model reads.

Sequence i contributes q_len[i] tokens: positions num_computed .. num_computed + q_len - 1 of
its context, which is seq_len[i] = num_computed + q_len tokens long after this step. Its new
tokens' K/V go to slot block_table[pos // block_size] * block_size + pos % block_size. The
host work is numpy over the whole batch, not a Python loop per token.

With overlap scheduling a decode's input may be a token the previous step sampled whose value
is still on the device (a PENDING placeholder on the host): `pending_src` then names, per
input row, the row of the previous step's sampled tokens to read (-1 = take input_ids).

`pack_batch` does the host part and returns plain numpy (a HostBatch), which rank 0 of a
tensor-parallel engine pickles to the other ranks; `upload_batch` makes the device tensors
on each rank."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tenk.engine.sequence import PENDING, Sequence
from tenk.kernels.attention import AttentionMetadata


@dataclass
class StepBatch:
    input_ids: torch.Tensor  # [T] int64, device
    positions: torch.Tensor  # [T] int64, device
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [S] int64, device: last row of each sequence that samples
    sample_rows: list[int]  # indices into the step's sequence list, aligned with logits_indices
    num_tokens: int
    pending_src: torch.Tensor | None = None  # [T] int64, device: previous-step row or -1


# Each array starts this many elements into the upload (>= 64 bytes): Triton compiles a kernel
# variant per pointer alignment, so views at odd offsets (after a prompt of odd length) would
# each cost a compile in the middle of serving.
UPLOAD_ALIGN = 16


def _upload(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Same-dtype host arrays -> device tensors through one (pinned) copy: on a GPU each
    transfer costs a few microseconds of launch and sync no matter how small it is."""
    if device.type != "cuda":
        return [torch.from_numpy(a) for a in arrays]
    starts, total = [], 0
    for a in arrays:
        starts.append(total)
        total += -(-a.size // UPLOAD_ALIGN) * UPLOAD_ALIGN
    host = np.zeros(total, dtype=arrays[0].dtype)
    for a, start in zip(arrays, starts):
        host[start : start + a.size] = a.reshape(-1)
    dev = torch.from_numpy(host).pin_memory().to(device, non_blocking=True)
    return [dev[start : start + a.size].view(a.shape) for a, start in zip(arrays, starts)]


@dataclass
class HostBatch:
    """One packed step on the host: everything a rank needs to run the step's forward."""

    input_ids: np.ndarray  # [T] int64; PENDING where pending_src names the value
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64
    logits_indices: np.ndarray  # [S] int64
    pending_src: np.ndarray | None  # [T] int64: previous-step row or -1; None: nothing pending
    cu_seqlens_q: np.ndarray  # [B + 1] int32
    seq_lens: np.ndarray  # [B] int32
    block_tables: np.ndarray  # [B, W] int32, padded with block 0
    max_seqlen_q: int
    max_seqlen_k: int
    sample_rows: list[int]  # indices into the step's sequence list, aligned with logits_indices
    decode_only: bool


def prepare_batch(
    seqs: list[Sequence],
    num_new_tokens: list[int],
    block_size: int,
    device: torch.device,
    decode_only: bool,
    prev_rows: dict[int, int] | None = None,  # seq_id -> row of the previous step's samples
) -> StepBatch:
    return upload_batch(pack_batch(seqs, num_new_tokens, block_size, decode_only, prev_rows), device)


def pack_batch(
    seqs: list[Sequence],
    num_new_tokens: list[int],
    block_size: int,
    decode_only: bool,
    prev_rows: dict[int, int] | None = None,
) -> HostBatch:
    num_seqs = len(seqs)
    q_lens = np.asarray(num_new_tokens, dtype=np.int64)
    starts = np.fromiter((s.num_computed_tokens for s in seqs), dtype=np.int64, count=num_seqs)
    seq_lens = starts + q_lens
    cu = np.zeros(num_seqs + 1, dtype=np.int64)
    np.cumsum(q_lens, out=cu[1:])
    num_tokens = int(cu[-1])

    if decode_only:
        input_ids = np.fromiter((s.token_ids[-1] for s in seqs), dtype=np.int64, count=num_seqs)
    else:
        ids: list[int] = []
        for s, st, n in zip(seqs, starts.tolist(), num_new_tokens):
            ids.extend(s.token_ids[st : st + n])
        input_ids = np.asarray(ids, dtype=np.int64)
    seq_of_token = np.repeat(np.arange(num_seqs), q_lens)
    positions = np.arange(num_tokens, dtype=np.int64) + np.repeat(starts - cu[:-1], q_lens)

    # Block tables, padded with block 0 (attention never reads past a sequence's length).
    table_lens = np.fromiter((len(s.block_table) for s in seqs), dtype=np.int64, count=num_seqs)
    flat_tables: list[int] = []
    for s in seqs:
        flat_tables.extend(s.block_table)
    block_tables = np.zeros((num_seqs, int(table_lens.max())), dtype=np.int32)
    block_tables[np.arange(block_tables.shape[1])[None, :] < table_lens[:, None]] = flat_tables
    slot_mapping = block_tables[seq_of_token, positions // block_size].astype(np.int64) * block_size + (
        positions % block_size
    )

    if decode_only:
        sample_rows = list(range(num_seqs))
        logits_indices = np.arange(num_seqs, dtype=np.int64)
    else:
        sample_rows = [i for i, s in enumerate(seqs) if seq_lens[i] == s.num_tokens]
        logits_indices = cu[1:][sample_rows] - 1 if sample_rows else np.zeros(0, dtype=np.int64)

    src = None
    pending = np.flatnonzero(input_ids == PENDING)
    if len(pending):
        src = np.full(num_tokens, -1, dtype=np.int64)
        src[pending] = [prev_rows[seqs[i].seq_id] for i in seq_of_token[pending].tolist()]
    return HostBatch(
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slot_mapping,
        logits_indices=logits_indices,
        pending_src=src,
        cu_seqlens_q=cu.astype(np.int32),
        seq_lens=seq_lens.astype(np.int32),
        block_tables=block_tables,
        max_seqlen_q=int(q_lens.max()),
        max_seqlen_k=int(seq_lens.max()),
        sample_rows=sample_rows,
        decode_only=decode_only,
    )


def upload_batch(host: HostBatch, device: torch.device) -> StepBatch:
    host64 = [host.input_ids, host.positions, host.slot_mapping, host.logits_indices]
    if host.pending_src is not None:
        host64.append(host.pending_src)
    ids_t, pos_t, slots_t, logits_t, *src_t = _upload(host64, device)
    cu_t, lens_t, tables_t = _upload([host.cu_seqlens_q, host.seq_lens, host.block_tables], device)
    meta = AttentionMetadata(
        cu_seqlens_q=cu_t,
        seq_lens=lens_t,
        slot_mapping=slots_t,
        block_tables=tables_t,
        max_seqlen_q=host.max_seqlen_q,
        max_seqlen_k=host.max_seqlen_k,
        cu_seqlens_q_cpu=host.cu_seqlens_q.tolist(),
        seq_lens_cpu=host.seq_lens.tolist(),
        decode_only=host.decode_only,
    )
    return StepBatch(
        input_ids=ids_t,
        positions=pos_t,
        meta=meta,
        logits_indices=logits_t,
        sample_rows=host.sample_rows,
        num_tokens=len(host.input_ids),
        pending_src=src_t[0] if src_t else None,
    )
