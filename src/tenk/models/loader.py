"""Build a model for a config and fill its weights: from a safetensors directory, or random
(`load_format="dummy"`) directly on the target device.

Loading is one loop whatever the layout: map each checkpoint name through the family's
rename table, hand the tensor to the parameter's `weight_loader` (which shards and places
it), then check that every parameter got every shard it needs."""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from torch import nn

from tenk.errors import CheckpointError, ConfigError
from tenk.models.config import ModelConfig
from tenk.models.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
from tenk.models.layers.moe import FusedMoE
from tenk.models.registry import model_class
from tenk.models.safetensors_io import iter_tensors

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        d = DTYPES.get(cfg.torch_dtype, torch.bfloat16)
        # CPU matmuls in half precision are slow and lossy; fp32 there unless asked otherwise.
        return torch.float32 if device.type == "cpu" and d == torch.float16 else d
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def build_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, quant_factory=None, expert_parallel=False) -> nn.Module:
    cls = model_class(cfg)
    with torch.device(device):
        model = cls(cfg, dtype, quant_factory, expert_parallel)
    return model.eval().requires_grad_(False)


def _expected_keys(model: nn.Module) -> dict[str, set]:
    """For each parameter name, the (shard, expert) pieces a checkpoint must provide."""
    expected: dict[str, set] = {}
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if getattr(p, "optional", False) or id(p) in seen:  # a tied lm_head is the embedding
                continue
            seen.add(id(p))
            if isinstance(mod, QKVParallelLinear):
                keys = {("q", None), ("k", None), ("v", None)}
            elif isinstance(mod, MergedColumnParallelLinear):
                keys = {(str(i), None) for i in range(len(mod.output_sizes))}
            elif isinstance(mod, FusedMoE):
                shards = ("w1", "w3") if p_name.startswith("w13") else ("w2",)
                keys = {(s, e) for s in shards for e in range(mod.global_num_experts)}
            else:
                keys = {(None, None)}
            expected[full] = keys
    return expected


def load_weights(model: nn.Module, model_dir: str, name_transform=None) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    expected = _expected_keys(model)
    got: dict[str, set] = defaultdict(set)
    ignored = []
    for ckpt_name, tensor in iter_tensors(model_dir):
        if name_transform is not None:
            mapped = name_transform(ckpt_name, tensor)
            if mapped is None:
                continue
            ckpt_name, tensor = mapped
        param_name, shard, expert = model.map_checkpoint_name(ckpt_name)
        param = params.get(param_name)
        if param is None:
            if param_name == "lm_head.weight" and model.config.tie_word_embeddings:
                continue
            ignored.append(ckpt_name)
            continue
        _check_dtype(param, tensor, ckpt_name)
        if param.dtype in _FLOAT_DTYPES and tensor.dtype != param.dtype:
            tensor = tensor.to(param.dtype)
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            if tuple(param.shape) != tuple(tensor.shape):
                raise CheckpointError(f"tensor {ckpt_name!r}: shape {tuple(tensor.shape)} does not match the expected {tuple(param.shape)}")
            param.data.copy_(tensor)
        elif expert is not None:
            loader(param, tensor, shard_id=shard, expert_id=expert, name=ckpt_name)
        else:
            loader(param, tensor, shard_id=shard, name=ckpt_name)
        got[param_name].add((shard, expert))
    for name, keys in expected.items():
        missing = keys - got.get(name, set())
        if missing:
            shard, expert = sorted(missing, key=str)[0]
            what = name + (f" (shard {shard}" + (f", expert {expert}" if expert is not None else "") + ")" if shard else "")
            raise CheckpointError(f"checkpoint {model_dir} is missing tensor for parameter {what}")
    if ignored:
        logger.warning("ignored %d checkpoint tensors that tenk does not use (first: %s)", len(ignored), ignored[0])
    for mod in model.modules():
        qm = getattr(mod, "quant_method", None)
        if qm is not None:
            qm.process_weights_after_loading(mod)


def _check_dtype(param: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if param.dtype in _FLOAT_DTYPES:
        if tensor.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"tensor {name!r} has dtype {tensor.dtype}, expected a float dtype (bf16/fp16/fp32)")
    elif tensor.dtype != param.dtype:
        raise CheckpointError(f"tensor {name!r} has dtype {tensor.dtype}, expected {param.dtype}")


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights in the exact shapes, made where the parameters live (the GPU for real
    sizes), scaled like a trained model so activations stay finite."""
    gen_device = next(model.parameters()).device
    g = torch.Generator(device=gen_device).manual_seed(seed)
    for name, p in model.named_parameters():
        fill = getattr(p, "dummy_fill", None)
        if fill is not None:
            fill(p, g)
        elif p.dtype in _FLOAT_DTYPES:
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("e_score_correction_bias") or name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)
        elif p.dtype == torch.uint8:
            p.copy_(torch.randint(0, 256, p.shape, generator=g, device=gen_device, dtype=torch.uint8))
        else:  # fp8 and other low-precision storage
            p.copy_(torch.empty(p.shape, device=gen_device).uniform_(0.5, 1.0, generator=g).to(p.dtype))
    for mod in model.modules():
        qm = getattr(mod, "quant_method", None)
        if qm is not None:
            qm.process_weights_after_loading(mod)


def load_model(
    model_config: ModelConfig,
    model_path: str | None,
    device: torch.device | str,
    dtype: torch.dtype | str = "auto",
    load_format: str = "auto",
    quant_factory=None,
    name_transform=None,
    expert_parallel: bool = False,
    seed: int = 0,
) -> nn.Module:
    device = torch.device(device)
    dtype = resolve_dtype(dtype, model_config, device)
    if load_format not in ("auto", "safetensors", "dummy"):
        raise ConfigError(f"load_format {load_format!r} is not one of auto, safetensors, dummy")
    model = build_model(model_config, device, dtype, quant_factory, expert_parallel)
    if load_format == "dummy":
        init_dummy_weights(model, seed)
    else:
        if model_path is None:
            raise ConfigError("a model directory is needed unless load_format is 'dummy'")
        load_weights(model, model_path, name_transform)
    return model
