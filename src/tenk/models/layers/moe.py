"""Sparse MoE block: router -> top-k -> fused experts (stacked per layer).

Experts are stored stacked so kernels read one tensor per layer:
  w13_weight [E, 2I, H]  (gate rows 0:I, up rows I:2I)     w2_weight [E, H, I]
Under tensor parallelism each rank holds every expert's slice of the FFN dim (I / tp);
with expert parallelism each rank holds whole experts E / tp.
"""

from __future__ import annotations

import torch
from torch import nn

from tenk.errors import CheckpointError
from tenk.kernels.routing import topk_route
from tenk.models.config import ModelConfig
from tenk.models.layers.linear import ReplicatedLinear
from tenk.parallel.state import divide, get_tp_rank, get_tp_size, tp_all_reduce

_SHARDS = {"w1": 0, "w3": 1, "w2": None}


class UnquantizedMoEMethod:
    def create_weights(self, layer, num_experts, hidden_size, intermediate_size, params_dtype):
        w13 = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size, dtype=params_dtype), requires_grad=False)
        w2 = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size, dtype=params_dtype), requires_grad=False)
        layer.register_parameter("w13_weight", w13)
        layer.register_parameter("w2_weight", w2)

    def process_weights_after_loading(self, layer):
        pass

    def apply(self, layer, x, topk_weights, topk_ids):
        from tenk.kernels.moe import fused_moe

        return fused_moe(x, layer.w13_weight, layer.w2_weight, topk_weights, topk_ids)


class FusedMoE(nn.Module):
    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        params_dtype,
        quant_method=None,
        expert_parallel: bool = False,
    ):
        super().__init__()
        tp, rank = get_tp_size(), get_tp_rank()
        self.global_num_experts, self.top_k = num_experts, top_k
        self.expert_parallel = expert_parallel and tp > 1
        if self.expert_parallel:
            self.num_local_experts = divide(num_experts, tp, "num_experts")
            self.expert_start = rank * self.num_local_experts
            self.intermediate_size = intermediate_size
        else:
            self.num_local_experts, self.expert_start = num_experts, 0
            self.intermediate_size = divide(intermediate_size, tp, "expert intermediate size")
        self.tp_rank, self.tp_size = rank, tp
        self.quant_method = quant_method or UnquantizedMoEMethod()
        self.quant_method.create_weights(self, self.num_local_experts, hidden_size, self.intermediate_size, params_dtype)
        for p in self.parameters(recurse=False):
            p.weight_loader = self.weight_loader

    def weight_loader(self, param, loaded: torch.Tensor, shard_id: str, expert_id: int, name: str = "") -> None:
        """Load one expert's w1 / w3 / w2 tensor (weight or scale) into the stacked parameter.
        Per-expert tensors are [I, X] for w1/w3 (FFN dim first) and [H, I'] for w2 (FFN dim last);
        per-tensor scales are scalars, kept per expert (and per w1/w3 in w13 params of shape [E, 2])."""
        local = expert_id - self.expert_start
        if not 0 <= local < self.num_local_experts:
            return
        target = param.data[local]
        if target.dim() <= 1 and loaded.numel() == 1:  # per-tensor scale
            if target.dim() == 1:
                target[_SHARDS[shard_id]].copy_(loaded.reshape(()))
            else:
                target.copy_(loaded.reshape(()))
            return
        shard_on_tp = not self.expert_parallel and self.tp_size > 1
        if shard_id in ("w1", "w3"):
            half = target.shape[0] // 2
            target = target.narrow(0, _SHARDS[shard_id] * half, half)
            if shard_on_tp:
                loaded = loaded.narrow(0, self.tp_rank * half, half)
        elif shard_id == "w2":
            if shard_on_tp:
                n = target.shape[1]
                loaded = loaded.narrow(1, self.tp_rank * n, n)
        else:
            raise CheckpointError(f"tensor {name!r}: unknown expert projection {shard_id!r}")
        if tuple(target.shape) != tuple(loaded.shape):
            raise CheckpointError(f"tensor {name!r}: shape {tuple(loaded.shape)} does not match the expected {tuple(target.shape)}")
        target.copy_(loaded)

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        if self.expert_parallel:
            local = topk_ids - self.expert_start
            topk_ids = torch.where((local >= 0) & (local < self.num_local_experts), local, -1)
        return self.quant_method.apply(self, x, topk_weights, topk_ids)


class Router(nn.Module):
    """softmax (Qwen3-MoE, Mixtral) or sigmoid with a selection-only correction bias (MiniMax-M2).
    Returns fp32 weights [T, k] and expert ids [T, k]."""

    def __init__(self, cfg: ModelConfig, params_dtype):
        super().__init__()
        self.kind, self.top_k, self.renormalize = cfg.router, cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.gate = ReplicatedLinear(cfg.hidden_size, cfg.num_experts, False, None, params_dtype)
        if cfg.router_correction_bias:
            self.e_score_correction_bias = nn.Parameter(torch.zeros(cfg.num_experts, dtype=torch.float32), requires_grad=False)
        else:
            self.e_score_correction_bias = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.gate(x)  # [T, E]
        # one fused launch on the GPU (tenk.kernels.routing); the same torch ops elsewhere
        return topk_route(logits, self.top_k, self.kind, self.renormalize, self.e_score_correction_bias)


class SparseMoeBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, params_dtype, quant_factory=None, prefix: str = "", expert_parallel: bool = False):
        super().__init__()
        self.router = Router(cfg, params_dtype)
        qm = quant_factory("moe", f"{prefix}.experts") if quant_factory else None
        self.experts = FusedMoE(
            cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size, cfg.moe_intermediate_size, params_dtype, qm, expert_parallel
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = self.router(x)
        return tp_all_reduce(self.experts(x, topk_weights, topk_ids))
