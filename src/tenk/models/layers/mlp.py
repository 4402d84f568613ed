import torch
from torch import nn

from tenk.models.layers.activation import silu_and_mul
from tenk.models.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from tenk.parallel.state import tp_all_reduce


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate|up fused into one column-parallel GEMM."""

    def __init__(self, hidden_size: int, intermediate_size: int, params_dtype, quant_factory=None, prefix: str = ""):
        super().__init__()
        qm = (lambda n: quant_factory("linear", f"{prefix}.{n}")) if quant_factory else (lambda n: None)
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, False, qm("gate_up_proj"), params_dtype)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, False, qm("down_proj"), params_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tp_all_reduce(self.down_proj(silu_and_mul(self.gate_up_proj(x))))
