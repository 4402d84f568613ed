"""Quantized weight formats (NVFP4, FP8): reading checkpoints, `tenk quantize`, and the layer
methods that run them. The seam with the models is base.py.

How an engine loads a checkpoint whatever its format:

    qcfg = parse_quant_config(model_config.quantization)          # None when unquantized
    model = load_model(cfg, path, device, dtype,
                       quant_factory=quant_factory(qcfg),          # NVFP4 / FP8 methods per layer
                       name_transform=tensor_adapter(qcfg))        # compressed-tensors / FP8 names -> ModelOpt's
"""

from tenk.quant.convert import tensor_adapter
from tenk.quant.formats import QuantConfig, detect_quant_config, parse_quant_config
from tenk.quant.methods import get_quant_method, quant_factory, weight_bytes_by_format

__all__ = [
    "QuantConfig",
    "detect_quant_config",
    "get_quant_method",
    "parse_quant_config",
    "quant_factory",
    "tensor_adapter",
    "weight_bytes_by_format",
]
