"""How a layer's weights are stored and multiplied: the seam between models and formats.

Linear and MoE layers never touch a format themselves. Each holds a `quant_method` that
creates its parameters (each parameter carries a `weight_loader` that knows how to place a
checkpoint tensor into it), optionally re-lays them after loading, and applies them. The
unquantized (bf16/fp16/fp32) methods live in tenk.models.layers; NVFP4 and FP8 plug in here
with the same three calls, so the rest of the code does not know which format it runs.

Checkpoint names keep their suffix: `...q_proj.weight_scale` loads into the fused layer's
`weight_scale` parameter with shard_id "q"; `...experts.3.w1.weight_scale_2` loads into the
MoE layer's `w13_weight_scale_2` with expert_id 3 and shard_id "w1".
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class LinearMethod(Protocol):
    def create_weights(
        self,
        layer: nn.Module,
        input_size: int,  # per-rank K
        output_partition_sizes: list[int],  # per-rank N of each fused shard (e.g. [q, k, v])
        params_dtype: torch.dtype,
    ) -> None: ...

    def process_weights_after_loading(self, layer: nn.Module) -> None: ...

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor: ...


class MoEMethod(Protocol):
    def create_weights(
        self,
        layer: nn.Module,
        num_experts: int,  # experts on this rank
        hidden_size: int,
        intermediate_size: int,  # per-rank expert FFN width
        params_dtype: torch.dtype,
    ) -> None: ...

    def process_weights_after_loading(self, layer: nn.Module) -> None: ...

    def apply(
        self,
        layer: nn.Module,
        x: torch.Tensor,  # [T, H]
        topk_weights: torch.Tensor,  # [T, top_k] fp32
        topk_ids: torch.Tensor,  # [T, top_k] int (local expert ids; -1 = not on this rank)
    ) -> torch.Tensor: ...  # [T, H], not yet all-reduced across TP ranks
