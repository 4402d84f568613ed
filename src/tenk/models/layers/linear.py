"""Linear layers that know their tensor-parallel shard and how to load it.

Each parameter carries a `weight_loader(param, loaded, shard_id=None)`; the checkpoint
loader only maps names. Parameters mark which of their dims is the output (`output_dim`)
and the input (`input_dim`) so the same loader shards weights and per-block scales alike;
a 1-D parameter with one entry per fused shard (per-tensor scales) has `output_dim=None`
and `per_shard=True`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tenk.errors import CheckpointError
from tenk.parallel.state import divide, get_tp_rank, get_tp_size


class UnquantizedLinearMethod:
    def create_weights(self, layer, input_size, output_partition_sizes, params_dtype):
        weight = nn.Parameter(torch.empty(sum(output_partition_sizes), input_size, dtype=params_dtype), requires_grad=False)
        weight.output_dim, weight.input_dim = 0, 1
        layer.register_parameter("weight", weight)

    def process_weights_after_loading(self, layer):
        pass

    def apply(self, layer, x, bias=None):
        return F.linear(x, layer.weight, bias)


def _check_shape(param: torch.Tensor, loaded: torch.Tensor, name: str) -> None:
    if tuple(param.shape) != tuple(loaded.shape):
        raise CheckpointError(f"tensor {name!r}: shape {tuple(loaded.shape)} does not match the expected {tuple(param.shape)}")


def _full_shape(target: torch.Tensor, dim: int, full: int) -> torch.Tensor:
    """A shape-only stand-in for the whole (unsharded) tensor, for error messages."""
    shape = list(target.shape)
    shape[dim] = full
    return torch.empty(shape, device="meta")


class LinearBase(nn.Module):
    def __init__(self, input_size: int, output_sizes: list[int], bias: bool, quant_method, params_dtype, tp_dim: int | None):
        super().__init__()
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.tp_dim = tp_dim  # 0: column parallel, 1: row parallel, None: replicated
        self.input_size = input_size  # per rank
        self.output_sizes = output_sizes  # per rank, one per fused shard
        self.quant_method = quant_method or UnquantizedLinearMethod()
        self.quant_method.create_weights(self, input_size, output_sizes, params_dtype)
        if bias:
            b = nn.Parameter(torch.empty(sum(output_sizes), dtype=params_dtype), requires_grad=False)
            b.output_dim, b.input_dim = 0, None
            self.register_parameter("bias", b)
        else:
            self.bias = None
        for p in self.parameters(recurse=False):
            p.weight_loader = self.weight_loader

    # --- loading ------------------------------------------------------------
    def shard_offset(self, shard_id) -> tuple[int, int]:
        """(offset, size) of a fused shard along the output dim, in per-rank units."""
        return 0, sum(self.output_sizes)

    def shard_rank(self, shard_id) -> int:
        return self.tp_rank

    def shard_replicas(self, shard_id) -> int:
        """How many ranks hold the same slice of this shard (replicated kv heads)."""
        return 1

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None, name: str = "") -> None:
        out_dim = getattr(param, "output_dim", None)
        in_dim = getattr(param, "input_dim", None)
        if getattr(param, "per_shard", False):
            index = 0 if shard_id is None else self.shard_index(shard_id)
            param.data[index].copy_(loaded.reshape(()))
            return
        target = param.data
        if out_dim is not None and param.dim() > 0:
            ratio = param.shape[out_dim] / sum(self.output_sizes)
            off, size = self.shard_offset(shard_id)
            off, size = int(off * ratio), int(size * ratio)
            target = target.narrow(out_dim, off, size)
            if self.tp_dim == 0 and self.tp_size > 1:
                full = size * self.tp_size // self.shard_replicas(shard_id)
                if loaded.dim() <= out_dim or loaded.shape[out_dim] != full:
                    _check_shape(_full_shape(target, out_dim, full), loaded, name)
                loaded = loaded.narrow(out_dim, self.shard_rank(shard_id) * size, size)
        if self.tp_dim == 1 and in_dim is not None and self.tp_size > 1:
            size = target.shape[in_dim]
            if loaded.dim() <= in_dim or loaded.shape[in_dim] != size * self.tp_size:
                _check_shape(_full_shape(target, in_dim, size * self.tp_size), loaded, name)
            loaded = loaded.narrow(in_dim, self.tp_rank * size, size)
        _check_shape(target, loaded, name)
        target.copy_(loaded)

    def shard_index(self, shard_id) -> int:
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)


class ReplicatedLinear(LinearBase):
    def __init__(self, input_size, output_size, bias=False, quant_method=None, params_dtype=None):
        super().__init__(input_size, [output_size], bias, quant_method, params_dtype, tp_dim=None)


class ColumnParallelLinear(LinearBase):
    """Output features split over ranks; no communication (the next row-parallel layer reduces)."""

    def __init__(self, input_size, output_size, bias=False, quant_method=None, params_dtype=None):
        super().__init__(input_size, [divide(output_size, get_tp_size())], bias, quant_method, params_dtype, tp_dim=0)


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel projections of the same input in one GEMM (gate|up)."""

    def __init__(self, input_size, output_sizes: list[int], bias=False, quant_method=None, params_dtype=None):
        tp = get_tp_size()
        super().__init__(input_size, [divide(o, tp) for o in output_sizes], bias, quant_method, params_dtype, tp_dim=0)

    def shard_index(self, shard_id) -> int:
        return int(shard_id)

    def shard_offset(self, shard_id):
        i = int(shard_id)
        return sum(self.output_sizes[:i]), self.output_sizes[i]


class QKVParallelLinear(LinearBase):
    """q|k|v in one GEMM. KV heads fewer than ranks are replicated, as vLLM does."""

    def __init__(self, hidden_size, head_dim, num_heads, num_kv_heads, bias=False, quant_method=None, params_dtype=None):
        tp = get_tp_size()
        self.num_heads = divide(num_heads, tp, "num_attention_heads")
        if num_kv_heads >= tp:
            self.num_kv_heads = divide(num_kv_heads, tp, "num_key_value_heads")
            self.kv_replicas = 1
        else:
            self.num_kv_heads = 1
            self.kv_replicas = divide(tp, num_kv_heads, "tensor-parallel size over num_key_value_heads")
        self.head_dim = head_dim
        sizes = [self.num_heads * head_dim, self.num_kv_heads * head_dim, self.num_kv_heads * head_dim]
        super().__init__(hidden_size, sizes, bias, quant_method, params_dtype, tp_dim=0)

    _INDEX = {"q": 0, "k": 1, "v": 2}

    def shard_index(self, shard_id) -> int:
        return self._INDEX[shard_id]

    def shard_offset(self, shard_id):
        i = self._INDEX[shard_id]
        return sum(self.output_sizes[:i]), self.output_sizes[i]

    def shard_rank(self, shard_id) -> int:
        return self.tp_rank if shard_id == "q" else self.tp_rank // self.kv_replicas

    def shard_replicas(self, shard_id) -> int:
        return 1 if shard_id == "q" else self.kv_replicas


class RowParallelLinear(LinearBase):
    """Input features split over ranks; the caller all-reduces the partial sums."""

    def __init__(self, input_size, output_size, bias=False, quant_method=None, params_dtype=None):
        super().__init__(divide(input_size, get_tp_size()), [output_size], bias, quant_method, params_dtype, tp_dim=1)

    def forward(self, x):
        # Bias is added once, after the reduction, by the caller's all-reduce path: only rank 0 adds it.
        bias = self.bias if self.tp_rank == 0 else None
        return self.quant_method.apply(self, x, bias)
