"""A roofline estimate of decode throughput for one layout.

One decode step of a replica at batch B (B sequences, one new token each), per GPU:

    bytes = dense weights (attention, dense MLP, router, norms, lm_head: read in full)
          + routed experts x (1 - (1 - k/E)^B)        (expected share of experts that B tokens
                                                       with top-k routing touch in a layer)
          + B embedding rows
          + B x context x KV bytes per token per GPU   (every sequence reads its whole context)
    flops = 2 x B x (dense matmul params + k/E x expert params)   (local shards)
          + 4 x B x context x q heads per GPU x head_dim          (QK^T and PV)
    time  = max(bytes / HBM bandwidth, flops / peak) + collectives
    collectives (TP > 1) = per layer: 2 all-reduces of B x hidden bf16 (after attention and after
          the MoE/MLP), +1 for MiniMax-M2's full-width QK-norm (its sum of squares), plus one for
          the vocab-parallel embedding and an all-gather of the fp32 logits; each costed by
          hardware.Interconnect (ring: 2(t-1) hop latencies + 2(t-1)/t x bytes / link bandwidth).

Throughput of a layout = B x DP / time at the largest B that the KV cache holds (at the planned
context) and max_num_seqs allows. Prefill is not modelled (decode dominates long outputs), nor
are kernel launch gaps (CUDA graphs hide most); treat the numbers as a ranking and an upper
bound, and let `--autotune` measure.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenk.models.config import ModelConfig
from tenk.plan.hardware import GpuSpec
from tenk.plan.weights import WeightsPerGpu


@dataclass(frozen=True, slots=True)
class DecodeStep:
    batch: int
    weight_bytes: float
    kv_bytes: float
    flops: float
    memory_s: float
    compute_s: float
    comm_s: float

    @property
    def seconds(self) -> float:
        return max(self.memory_s, self.compute_s) + self.comm_s

    @property
    def bound(self) -> str:
        if self.comm_s > max(self.memory_s, self.compute_s):
            return "comm"
        return "memory" if self.memory_s >= self.compute_s else "compute"


def experts_touched_fraction(mc: ModelConfig, batch: int) -> float:
    if not mc.is_moe:
        return 1.0
    return 1.0 - (1.0 - mc.num_experts_per_tok / mc.num_experts) ** batch


def collectives_per_layer(mc: ModelConfig) -> int:
    return 2 + (1 if mc.qk_norm == "full" else 0)


def decode_step(
    mc: ModelConfig, w: WeightsPerGpu, gpu: GpuSpec, *, batch: int, context: int, kv_bytes_per_token: int,
    act_bytes: int = 2,
) -> DecodeStep:
    """One decode step of one replica (w: the weights of one of its GPUs)."""
    tp = w.tp
    frac = experts_touched_fraction(mc, batch)
    weight_bytes = w.dense + w.experts * frac + batch * w.embedding_row_bytes
    kv_bytes = batch * context * kv_bytes_per_token
    expert_share = mc.num_experts_per_tok / mc.num_experts if mc.is_moe else 0.0
    q_heads = mc.num_heads // tp
    flops = 2.0 * batch * (w.matmul_params_dense + expert_share * w.matmul_params_experts)
    flops += 4.0 * batch * context * q_heads * mc.head_dim * mc.num_layers
    comm = 0.0
    if tp > 1:
        link = gpu.link
        per_ar = link.all_reduce_seconds(batch * mc.hidden_size * act_bytes, tp)
        comm = (collectives_per_layer(mc) * mc.num_layers + 1) * per_ar
        comm += link.all_gather_seconds(batch * mc.vocab_size * 4, tp)
    return DecodeStep(
        batch=batch,
        weight_bytes=weight_bytes,
        kv_bytes=kv_bytes,
        flops=flops,
        memory_s=(weight_bytes + kv_bytes) / gpu.hbm_bandwidth,
        compute_s=flops / gpu.peak_flops,
        comm_s=comm,
    )
