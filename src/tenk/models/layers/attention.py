"""The attention block: fused qkv projection, optional QK-norm (per head or full width),
partial RoPE, paged attention, output projection."""

from __future__ import annotations

import torch
from torch import nn

from tenk.errors import CheckpointError
from tenk.kernels.attention import AttentionMetadata, paged_attention, store_kvcache
from tenk.kernels.qk_norm import full_width_qk_norm
from tenk.kernels.qk_norm_rope import fusable, qk_norm_rope
from tenk.models.config import ModelConfig
from tenk.models.layers.linear import QKVParallelLinear, RowParallelLinear
from tenk.models.layers.norm import RMSNorm
from tenk.models.layers.rotary import RotaryEmbedding
from tenk.parallel.state import get_tp_size, tp_all_reduce


class Attention(nn.Module):
    """Holds one layer's KV cache views (`k_cache`, `v_cache`), bound by the model runner."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim, self.scale = num_heads, num_kv_heads, head_dim, scale
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        # fp8 cache scales (per tensor): Python floats, so CUDA graphs bake them in without a sync.
        self.k_scale: float = 1.0
        self.v_scale: float = 1.0

    def forward(self, q, k, v, meta: AttentionMetadata):
        if self.k_cache is not None and meta.block_tables is not None:
            store_kvcache(k, v, self.k_cache, self.v_cache, meta.slot_mapping, self.k_scale, self.v_scale)
        return paged_attention(q, k, v, self.k_cache, self.v_cache, meta, self.scale, self.k_scale, self.v_scale)


class FullWidthRMSNorm(RMSNorm):
    """The weight of MiniMax-M2's full-width q (or k) norm: this rank's slice of it. The norm
    itself runs for q and k together (tenk.kernels.qk_norm), since under tensor parallelism
    their sums of squares are all-reduced, in one call. When kv heads are replicated over
    ranks, `replicas` ranks hold the same k slice."""

    def __init__(self, full_size: int, local_size: int, eps: float, params_dtype=None, shard_rank: int = 0, replicas: int = 1):
        super().__init__(local_size, eps, params_dtype)
        self.full_size, self.shard_rank, self.replicas = full_size, shard_rank, replicas
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param, loaded, shard_id=None, name=""):
        if loaded.shape != (self.full_size,):
            raise CheckpointError(f"tensor {name!r}: shape {tuple(loaded.shape)} does not match the expected ({self.full_size},)")
        n = param.shape[0]
        param.data.copy_(loaded[self.shard_rank * n : (self.shard_rank + 1) * n])



class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, params_dtype, quant_factory=None, prefix: str = ""):
        super().__init__()
        qm = (lambda name: quant_factory("linear", f"{prefix}.{name}")) if quant_factory else (lambda name: None)
        self.head_dim = cfg.head_dim
        self.qkv_proj = QKVParallelLinear(
            cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.attention_bias, qm("qkv_proj"), params_dtype
        )
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size = self.num_heads * cfg.head_dim, self.num_kv_heads * cfg.head_dim
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, False, qm("o_proj"), params_dtype)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm == "per_head":
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, params_dtype)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, params_dtype)
        elif cfg.qk_norm == "full":
            rank, reps = self.qkv_proj.tp_rank, self.qkv_proj.kv_replicas
            self.q_norm = FullWidthRMSNorm(cfg.q_size, self.q_size, cfg.rms_norm_eps, params_dtype, rank)
            self.k_norm = FullWidthRMSNorm(cfg.kv_size, self.kv_size, cfg.rms_norm_eps, params_dtype, rank // reps, reps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rotary_dim, cfg.max_position_embeddings, cfg.rope_theta)
        # per-head norm and whole-head rotation as one kernel (tenk.kernels.qk_norm_rope)
        self.fused_norm_rope = cfg.qk_norm == "per_head" and fusable(cfg.head_dim, cfg.rotary_dim)
        self.attn = Attention(self.num_heads, self.num_kv_heads, cfg.head_dim, cfg.head_dim**-0.5)

    def forward(self, positions, hidden, meta):
        qkv = self.qkv_proj(hidden)  # [T, q + 2kv]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm == "full":
            q, k = full_width_qk_norm(
                q, k, self.q_norm.weight, self.k_norm.weight, self.q_norm.full_size, self.k_norm.full_size,
                self.q_norm.eps, self.k_norm.replicas, tp_all_reduce if get_tp_size() > 1 else None,
            )  # fmt: skip
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.fused_norm_rope:
            q, k = qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, positions,
                                self.rotary.cos_sin_cache)
        else:
            if self.qk_norm == "per_head":
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rotary(positions, q, k)
        out = self.attn(q, k, v, meta).reshape(-1, self.q_size)
        return tp_all_reduce(self.o_proj(out))
