"""Per-tensor renames into tenk's in-memory convention (ModelOpt's), for each on-disk family."""

import pytest
import torch

from tenk.errors import CheckpointError
from tenk.quant.convert import (
    adapt_compressed_tensors,
    adapt_hf_fp8,
    adapt_modelopt,
    ct_name,
    modelopt_pattern_to_ct,
    tensor_adapter,
    to_compressed_tensors,
)
from tenk.quant.formats import parse_quant_config

M = "model.layers.0.mlp.experts.3.w1"


def test_modelopt_scalars_and_block_scales():
    name, t = adapt_modelopt(f"{M}.weight_scale_2", torch.tensor([0.5]))
    assert name == f"{M}.weight_scale_2" and t.shape == () and t.item() == 0.5
    assert adapt_modelopt(f"{M}.input_scale", torch.tensor(2.0))[1].shape == ()
    # FP8_PB_WO exports [N/128, 1, K/128, 1]
    _, t = adapt_modelopt(f"{M}.weight_scale", torch.arange(6.0).reshape(2, 1, 3, 1))
    assert t.shape == (2, 3) and t[1, 2].item() == 5.0
    packed = torch.zeros(4, 8, dtype=torch.uint8)
    assert adapt_modelopt(f"{M}.weight", packed)[1] is packed
    with pytest.raises(CheckpointError, match="one number"):
        adapt_modelopt(f"{M}.weight_scale_2", torch.ones(2))


def test_compressed_tensors_renames_and_inverts():
    assert adapt_compressed_tensors(f"{M}.weight_packed", torch.zeros(2, 8, dtype=torch.uint8))[0] == f"{M}.weight"
    name, t = adapt_compressed_tensors(f"{M}.weight_global_scale", torch.tensor([4.0]))
    assert name == f"{M}.weight_scale_2" and t.shape == () and t.item() == 0.25
    name, t = adapt_compressed_tensors(f"{M}.input_global_scale", torch.tensor([8.0]))
    assert name == f"{M}.input_scale" and t.item() == 0.125
    assert adapt_compressed_tensors(f"{M}.weight_zero_point", torch.zeros(2, 1)) is None
    assert adapt_compressed_tensors(f"{M}.weight_shape", torch.tensor([2, 16])) is None
    with pytest.raises(CheckpointError, match="asymmetric"):
        adapt_compressed_tensors(f"{M}.weight_zero_point", torch.ones(2, 1))
    with pytest.raises(CheckpointError, match="cannot be inverted"):
        adapt_compressed_tensors(f"{M}.weight_global_scale", torch.tensor([0.0]))
    with pytest.raises(CheckpointError, match="uint8"):
        adapt_compressed_tensors(f"{M}.weight_packed", torch.zeros(2, 8))
    bias = torch.ones(3)
    assert adapt_compressed_tensors("model.layers.0.self_attn.q_proj.bias", bias)[1] is bias


def test_hf_fp8_scale_names_and_shapes():
    name, t = adapt_hf_fp8(f"{M}.weight_scale_inv", torch.tensor([0.5]))
    assert name == f"{M}.weight_scale" and t.shape == ()
    # a 128x128 weight has a one-block [1, 1] scale: it stays 2-D
    assert adapt_hf_fp8(f"{M}.weight_scale_inv", torch.ones(1, 1))[1].shape == (1, 1)
    assert adapt_hf_fp8(f"{M}.weight_scale_inv", torch.ones(3, 2))[1].shape == (3, 2)


def test_reverse_map_matches_the_reader():
    q = parse_quant_config({"quant_method": "modelopt", "quant_algo": "NVFP4"})
    ct = parse_quant_config({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                             "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "float", "group_size": 16}}}})
    g = torch.tensor(0.1234567)
    name, t = to_compressed_tensors(f"{M}.weight_scale_2", g, quantized=True)
    assert name == f"{M}.weight_global_scale" and t.shape == (1,)
    back = tensor_adapter(ct)(name, t)
    assert back[0] == f"{M}.weight_scale_2" and abs(back[1].item() - g.item()) <= 1e-7 * g.item()
    assert ct_name("lm_head.weight", quantized=False) == "lm_head.weight"
    assert tensor_adapter(q) is adapt_modelopt and tensor_adapter(None)("x", g) == ("x", g)
    assert modelopt_pattern_to_ct("lm_head") == "lm_head"
    pattern = modelopt_pattern_to_ct("model.layers.*.self_attn*")
    import re

    assert pattern.startswith("re:") and re.match(pattern[3:], "model.layers.7.self_attn.q_proj")
