"""Detecting a checkpoint's quantized format and which modules it quantizes."""

import json

import pytest

from tenk.errors import ConfigError
from tenk.quant.formats import (
    COMPRESSED_TENSORS,
    FP8,
    HF_FP8,
    MODELOPT,
    NVFP4,
    detect_quant_config,
    parse_quant_config,
)

# The shape of the public MiniMax-M2.x NVFP4 checkpoints (ModelOpt, routed experts only).
MODELOPT_HF_QUANT = {
    "producer": {"name": "modelopt", "version": "0.39.0"},
    "quantization": {
        "quant_algo": "NVFP4",
        "kv_cache_quant_algo": "FP8",
        "group_size": 16,
        "exclude_modules": [
            "lm_head",
            "model.layers.0.block_sparse_moe.gate",
            "model.layers.1.block_sparse_moe.gate",
            "model.layers.*.self_attn*",
        ],
    },
}

# compressed-tensors' own config.json, as its ModelCompressor.update_config writes it.
CT_CONFIG = {
    "quant_method": "compressed-tensors",
    "format": "nvfp4-pack-quantized",
    "quantization_status": "compressed",
    "config_groups": {
        "group_0": {
            "format": "nvfp4-pack-quantized",
            "targets": ["Linear"],
            "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "symmetric": True,
                        "dynamic": False, "group_size": 16, "scale_dtype": "torch.float8_e4m3fn"},
            "input_activations": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "symmetric": True,
                                  "dynamic": "local", "group_size": 16},
        }
    },
    "ignore": ["lm_head", "re:.*mlp.gate$"],
}

# The official MiniMax-M2 config.json quantization block.
MINIMAX_FP8 = {
    "quant_method": "fp8",
    "fmt": "float8_e4m3fn",
    "activation_scheme": "dynamic",
    "weight_block_size": [128, 128],
    "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
}


def test_modelopt_nvfp4_from_hf_quant_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "minimax_m2"}))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(MODELOPT_HF_QUANT))
    q = detect_quant_config(tmp_path)
    assert (q.format, q.checkpoint_format, q.group_size, q.kv_cache_quant_algo) == (NVFP4, MODELOPT, 16, "FP8")
    assert q.name == "nvfp4 (modelopt)"
    assert q.is_quantized("model.layers.0.block_sparse_moe.experts.7.w1")
    assert not q.is_quantized("model.layers.0.block_sparse_moe.gate")
    assert not q.is_quantized("model.layers.5.self_attn.q_proj")  # wildcard
    assert not q.is_quantized("model.layers.5.self_attn.qkv_proj")  # tenk's fused name: all shards excluded
    assert not q.is_quantized("lm_head")


def test_modelopt_flat_config_json_form(tmp_path):
    qc = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16, "ignore": ["lm_head", "model.layers.0.mlp"]}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "quantization_config": qc}))
    q = detect_quant_config(tmp_path)
    assert q.format == NVFP4 and q.exclude == ("lm_head", "model.layers.0.mlp")
    assert not q.is_quantized("model.layers.0.mlp.down_proj")  # parent module excluded
    assert q.is_quantized("model.layers.10.mlp.down_proj")  # no substring accident
    assert q.is_quantized("model.layers.1.mlp.gate_up_proj")


def test_modelopt_fp8_variants():
    q = parse_quant_config({"quantization": {"quant_algo": "FP8", "exclude_modules": ["lm_head"]}})
    assert (q.format, q.fp8_scheme, q.checkpoint_format) == (FP8, "tensor", MODELOPT)
    q = parse_quant_config({"quant_method": "modelopt", "quant_algo": "fp8_pb_wo"})
    assert (q.fp8_scheme, q.weight_block_size) == ("block", (128, 128))


def test_compressed_tensors_nvfp4():
    q = parse_quant_config(CT_CONFIG)
    assert (q.format, q.checkpoint_format, q.group_size) == (NVFP4, COMPRESSED_TENSORS, 16)
    assert q.static_input_scales
    assert q.is_quantized("model.layers.0.mlp.experts.3.gate_proj")
    assert q.is_quantized("model.layers.0.self_attn.qkv_proj")
    assert not q.is_quantized("model.layers.0.mlp.gate")  # regex ignore
    assert not q.is_quantized("lm_head")
    regex_targets = dict(CT_CONFIG, config_groups={"g": dict(CT_CONFIG["config_groups"]["group_0"], targets=["re:.*experts.*"])})
    q = parse_quant_config(regex_targets)
    assert q.is_quantized("model.layers.0.mlp.experts.3.gate_proj")
    assert not q.is_quantized("model.layers.0.self_attn.o_proj")


def test_minimax_fp8_block_and_hf_exclusion_rule(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "minimax_m2", "quantization_config": MINIMAX_FP8}))
    q = detect_quant_config(tmp_path)
    assert (q.format, q.checkpoint_format, q.fp8_scheme, q.weight_block_size) == (FP8, HF_FP8, "block", (128, 128))
    assert q.name == "fp8 block 128x128 (hf-fp8)"
    assert not q.is_quantized("model.layers.0.block_sparse_moe.gate")  # suffix rule
    assert q.is_quantized("model.layers.0.mlp.gate_up_proj")
    assert q.is_quantized("model.layers.0.block_sparse_moe.experts.0.w1")
    assert not q.is_quantized("lm_head")


def test_unquantized_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert detect_quant_config(tmp_path) is None


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"quant_method": "awq", "bits": 4}, "not supported"),
        ({"quant_method": "modelopt", "quant_algo": "INT4_AWQ"}, "INT4_AWQ"),
        ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {}}, "pack-quantized"),
        ({"quantization": {"quant_algo": "NVFP4", "group_size": 32}}, "group_size 16"),
        ({"quant_method": "fp8", "fmt": "e5m2"}, "E4M3"),
    ],
)
def test_unsupported_formats_say_so(cfg, message):
    with pytest.raises(ConfigError, match=message):
        parse_quant_config(cfg)


def test_fused_layer_with_mixed_shards_is_an_error():
    q = parse_quant_config({"quant_method": "modelopt", "quant_algo": "NVFP4", "ignore": ["model.layers.0.self_attn.k_proj"]})
    with pytest.raises(ConfigError, match="one format"):
        q.is_quantized("model.layers.0.self_attn.qkv_proj")
