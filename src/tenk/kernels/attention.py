"""Attention over a flat, mixed prefill + decode batch and a paged KV cache.

Shapes (T = tokens in the step, B = sequences, Hq / Hkv = query / kv heads, D = head_dim):
  q            [T, Hq, D]
  k, v         [T, Hkv, D]          new keys / values of this step
  k_cache      [num_blocks, block_size, Hkv, D]   (v_cache the same)
  out          [T, Hq, D]

Sequence i owns query rows cu_seqlens_q[i]:cu_seqlens_q[i+1]; its context (cached prefix +
this step's tokens) is seq_lens[i] long and lives in the blocks block_tables[i, :]. The query
rows are the *last* q_len positions of that context, so one formula covers a full prefill, a
chunked prefill after a cached prefix and a decode step.

`paged_attention` is the entry point: it dispatches to the Triton kernel on CUDA and to
`paged_attention_ref` (plain PyTorch) elsewhere. Both have the same signature.

fp8 (e4m3) cache (`--kv-cache-dtype fp8`): the store writes k / k_scale (v / v_scale) saturated
to +-448, attention reads the cache back times the scale. Scales are per tensor, Python floats
(1.0 without calibration, as vLLM does), so a captured CUDA graph bakes them in with no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tenk.kernels._common import FP8_E4M3_MAX, is_fp8


@dataclass
class AttentionMetadata:
    cu_seqlens_q: torch.Tensor  # [B+1] int32, device
    seq_lens: torch.Tensor  # [B] int32, device: context length after this step
    slot_mapping: torch.Tensor  # [T] int64, device: flat cache slot per new token, -1 = skip
    block_tables: torch.Tensor | None  # [B, max_blocks] int32, device; None = no cache
    max_seqlen_q: int
    max_seqlen_k: int
    # Host copies so the CPU reference loops without reading device memory.
    cu_seqlens_q_cpu: list[int] = field(default_factory=list)
    seq_lens_cpu: list[int] = field(default_factory=list)
    decode_only: bool = False

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @classmethod
    def for_prefill_without_cache(cls, seq_lens: list[int], device: torch.device | str) -> "AttentionMetadata":
        """Plain causal attention over whole prompts, no KV cache (tests, logits scoring)."""
        cu = [0]
        for n in seq_lens:
            cu.append(cu[-1] + n)
        return cls(
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
            slot_mapping=torch.empty(0, dtype=torch.int64, device=device),
            block_tables=None,
            max_seqlen_q=max(seq_lens),
            max_seqlen_k=max(seq_lens),
            cu_seqlens_q_cpu=cu,
            seq_lens_cpu=list(seq_lens),
        )


# ---------------------------------------------------------------- KV store


def _to_cache(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    if not is_fp8(dtype):
        return x.to(dtype)
    # e4m3fn has no infinity: torch casts values beyond +-448 to NaN, so saturate first.
    return (x.float() / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(dtype)


def _from_cache(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x.float() * scale if is_fp8(x.dtype) else x


def store_kvcache_ref(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
    k_scale: float = 1.0, v_scale: float = 1.0,
) -> None:
    """Write this step's keys/values into their cache slots (slot = block * block_size + offset);
    into an fp8 cache as k / k_scale and v / v_scale."""
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(num_slots, *k_cache.shape[2:])[slots] = _to_cache(k[keep], k_scale, k_cache.dtype)
    v_cache.view(num_slots, *v_cache.shape[2:])[slots] = _to_cache(v[keep], v_scale, v_cache.dtype)


def store_kvcache(k, v, k_cache, v_cache, slot_mapping, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    if k.is_cuda:
        from tenk.kernels.attention_triton import store_kvcache_triton

        return store_kvcache_triton(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    return store_kvcache_ref(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)


# ---------------------------------------------------------------- attention


def _causal_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [Lq, Hq, D], k/v [Lk, Hkv, D], Lq <= Lk, queries are the last Lq positions."""
    lq, hq, _ = q.shape
    lk, hkv, _ = k.shape
    group = hq // hkv
    qh = q.transpose(0, 1).float()  # [Hq, Lq, D]
    kh = k.transpose(0, 1).float().repeat_interleave(group, dim=0)  # [Hq, Lk, D]
    vh = v.transpose(0, 1).float().repeat_interleave(group, dim=0)
    scores = torch.matmul(qh, kh.transpose(1, 2)) * scale  # [Hq, Lq, Lk]
    q_pos = torch.arange(lk - lq, lk, device=q.device)[:, None]
    k_pos = torch.arange(lk, device=q.device)[None, :]
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    probs = F.softmax(scores, dim=-1)
    return torch.matmul(probs, vh).transpose(0, 1).to(q.dtype)  # [Lq, Hq, D]


def paged_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor | None,
    v_cache: torch.Tensor | None,
    meta: AttentionMetadata,
    scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Reference: one sequence at a time, gathering its context from the block table (an fp8
    cache read back times k_scale / v_scale). Expects this step's k/v already stored in the
    cache (when there is one)."""
    out = torch.empty_like(q)
    cu = meta.cu_seqlens_q_cpu
    for i, ctx_len in enumerate(meta.seq_lens_cpu):
        s, e = cu[i], cu[i + 1]
        if e == s:
            continue
        if meta.block_tables is None or k_cache is None:
            ks, vs = k[s:e], v[s:e]
        else:
            block_size = k_cache.shape[1]
            n_blocks = (ctx_len + block_size - 1) // block_size
            blocks = meta.block_tables[i, :n_blocks].long()
            ks = _from_cache(k_cache[blocks].reshape(-1, *k_cache.shape[2:])[:ctx_len], k_scale)
            vs = _from_cache(v_cache[blocks].reshape(-1, *v_cache.shape[2:])[:ctx_len], v_scale)
        out[s:e] = _causal_attend(q[s:e], ks, vs, scale)
    return out


def paged_attention(
    q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float, k_scale: float = 1.0, v_scale: float = 1.0
) -> torch.Tensor:
    if q.is_cuda and k_cache is not None and meta.block_tables is not None:
        from tenk.kernels.attention_triton import paged_attention_triton

        return paged_attention_triton(q, k, v, k_cache, v_cache, meta, scale, k_scale=k_scale, v_scale=v_scale)
    return paged_attention_ref(q, k, v, k_cache, v_cache, meta, scale, k_scale, v_scale)
