"""`tenk quantize`: a tiny bf16 checkpoint in, a ModelOpt checkpoint out, checked tensor by tensor."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from tenk.cli.main import app
from tenk.errors import CheckpointError, ConfigError
from tenk.quant.dequantize import dequantize_checkpoint, dequantized_weights
from tenk.quant.formats import FP8, HF_FP8, MODELOPT, NVFP4, detect_quant_config
from tenk.quant.fp8 import dequantize_fp8_block, quantize_fp8_block, quantize_fp8_per_tensor
from tenk.quant.nvfp4 import quantize_nvfp4
from tenk.quant.quantize import QuantizeOptions, compress_exclude, quantize_checkpoint


def read_all(path):
    """Every tensor of a checkpoint directory, read with the safetensors library itself."""
    out = {}
    files = sorted(path.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def run_cli(*args):
    result = CliRunner().invoke(app, ["quantize", *map(str, args)])
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def modules_with_2d_weight(tensors):
    return {k[: -len(".weight")] for k, v in tensors.items() if k.endswith(".weight") and v.ndim == 2}


def test_cli_nvfp4_experts_only(tiny_qwen3_moe, tmp_path):
    dst = tmp_path / "out"
    code, out = run_cli(tiny_qwen3_moe, dst, "--format", "nvfp4")
    assert code == 0, out
    assert "24 modules" in out  # 2 layers x 4 experts x 3 projections

    src, got = read_all(tiny_qwen3_moe), read_all(dst)
    q = detect_quant_config(dst)
    assert (q.format, q.checkpoint_format, q.group_size) == (NVFP4, MODELOPT, 16)
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "modelopt"
    assert cfg["quantization_config"]["quant_algo"] == "NVFP4"
    src_cfg = json.loads((tiny_qwen3_moe / "config.json").read_text())
    assert {k: v for k, v in cfg.items() if k != "quantization_config"} == src_cfg
    hf_quant = json.loads((dst / "hf_quant_config.json").read_text())["quantization"]
    assert hf_quant["exclude_modules"] == cfg["quantization_config"]["exclude_modules"]
    for f in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (dst / f).read_bytes() == (tiny_qwen3_moe / f).read_bytes()

    for module in modules_with_2d_weight(src):
        w = src[f"{module}.weight"]
        if ".experts." in module:
            # exactly quantize_nvfp4's math on the source weight, each tensor its own global scale
            packed, scale, gs = quantize_nvfp4(w)
            assert torch.equal(got[f"{module}.weight"], packed), module
            assert torch.equal(got[f"{module}.weight_scale"].view(torch.uint8), scale.view(torch.uint8)), module
            assert got[f"{module}.weight_scale_2"].shape == () and torch.equal(got[f"{module}.weight_scale_2"], gs)
            assert q.is_quantized(module)
        else:
            assert torch.equal(got[f"{module}.weight"], w), module  # untouched, bf16
            assert not q.is_quantized(module), module  # and the config says so
    for name, t in src.items():  # norms and everything else byte for byte
        if t.ndim == 1:
            assert torch.equal(got[name], t)
    # w1 and w3 of one expert keep separate global scales
    e = "model.layers.0.mlp.experts.0"
    assert got[f"{e}.gate_proj.weight_scale_2"] != got[f"{e}.up_proj.weight_scale_2"]
    assert "model.layers.*.self_attn.q_proj" in hf_quant["exclude_modules"] and "lm_head" in hf_quant["exclude_modules"]


def test_all_linear_with_exclude_on_mixtral(tiny_mixtral, tmp_path):
    dst = tmp_path / "out"
    s = quantize_checkpoint(tiny_mixtral, dst, QuantizeOptions(format="nvfp4", targets="all-linear", exclude=("model.layers.1.*",)))
    src, got = read_all(tiny_mixtral), read_all(dst)
    q = detect_quant_config(dst)
    for module in modules_with_2d_weight(src):
        quantized = got[f"{module}.weight"].dtype == torch.uint8
        expect = module.startswith("model.layers.0.") and not module.endswith((".gate", "embed_tokens"))
        assert quantized == expect, module
        assert q.is_quantized(module) == expect, module
    assert "model.layers.0.self_attn.q_proj" in s.quantized
    assert "model.layers.0.block_sparse_moe.gate" in s.kept and "lm_head" in s.kept
    # dequantized weights stay within NVFP4's reach of the source
    for module, w in dequantized_weights(dst):
        ref = src[f"{module}.weight"].float()
        assert (w - ref).abs().max() <= ref.abs().max() / 6 * 17 / 16


def test_fp8_per_tensor_and_block(tiny_qwen3_moe, tmp_path):
    src = read_all(tiny_qwen3_moe)
    e = "model.layers.1.mlp.experts.2.down_proj"

    per_tensor = tmp_path / "fp8"
    quantize_checkpoint(tiny_qwen3_moe, per_tensor, QuantizeOptions(format="fp8"))
    got = read_all(per_tensor)
    q8, s8 = quantize_fp8_per_tensor(src[f"{e}.weight"])
    assert torch.equal(got[f"{e}.weight"].view(torch.uint8), q8.view(torch.uint8)) and torch.equal(got[f"{e}.weight_scale"], s8)
    q = detect_quant_config(per_tensor)
    assert (q.format, q.fp8_scheme, q.quant_algo) == (FP8, "tensor", "FP8")

    block = tmp_path / "fp8_block"
    quantize_checkpoint(tiny_qwen3_moe, block, QuantizeOptions(format="fp8", targets="all-linear", fp8_scheme="block"))
    got = read_all(block)
    assert not (block / "hf_quant_config.json").exists()
    q = detect_quant_config(block)
    assert (q.checkpoint_format, q.fp8_scheme, q.weight_block_size) == (HF_FP8, "block", (128, 128))
    m = "model.layers.0.self_attn.q_proj"
    qb, sb = quantize_fp8_block(src[f"{m}.weight"])
    assert torch.equal(got[f"{m}.weight_scale_inv"], sb) and torch.equal(got[f"{m}.weight"].view(torch.uint8), qb.view(torch.uint8))
    assert not q.is_quantized("lm_head") and not q.is_quantized("model.layers.0.mlp.gate")
    assert q.is_quantized(m)


def test_fp8_block_source_requantized_to_nvfp4(tiny_qwen3_moe, tmp_path):
    """The MiniMax-M2 road: official block-FP8 weights in, NVFP4 experts out, the rest bf16."""
    fp8 = tmp_path / "fp8"
    quantize_checkpoint(tiny_qwen3_moe, fp8, QuantizeOptions(format="fp8", targets="all-linear", fp8_scheme="block"))
    nv = tmp_path / "nvfp4"
    s = quantize_checkpoint(fp8, nv, QuantizeOptions(format="nvfp4"))
    src8, got = read_all(fp8), read_all(nv)
    assert all(".experts." in m for m in s.quantized) and len(s.quantized) == 24
    e = "model.layers.0.mlp.experts.1.up_proj"
    w = dequantize_fp8_block(src8[f"{e}.weight"], src8[f"{e}.weight_scale_inv"])
    packed, scale, gs = quantize_nvfp4(w)
    assert torch.equal(got[f"{e}.weight"], packed) and torch.equal(got[f"{e}.weight_scale_2"], gs)
    m = "model.layers.1.self_attn.o_proj"  # not a target: dequantized to the model's bf16
    assert got[f"{m}.weight"].dtype == torch.bfloat16
    ref = dequantize_fp8_block(src8[f"{m}.weight"], src8[f"{m}.weight_scale_inv"]).to(torch.bfloat16)
    assert torch.equal(got[f"{m}.weight"], ref)
    assert not any(k.endswith("weight_scale_inv") for k in got)
    assert "quantization_config" in json.loads((nv / "config.json").read_text())
    assert detect_quant_config(nv).format == NVFP4


def test_shards_and_index(tiny_qwen3_moe, tmp_path):
    dst = tmp_path / "out"
    code, out = run_cli(tiny_qwen3_moe, dst, "--format", "nvfp4", "--targets", "all-linear", "--max-shard-size", "20KB")
    assert code == 0, out
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in dst.glob("*.safetensors"))
    assert len(files) > 3 and files == sorted(set(index["weight_map"].values()))
    assert all(f.startswith("model-") and f.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    got = read_all(dst)
    assert set(got) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in got.values())
    # a module's weight and scales land in the same shard
    m = "model.layers.0.self_attn.k_proj"
    assert len({index["weight_map"][f"{m}.{p}"] for p in ("weight", "weight_scale", "weight_scale_2")}) == 1
    assert not list(dst.glob("*.partial"))


def test_dequantized_checkpoint_loads_in_transformers(tiny_qwen3_moe, tmp_path):
    import transformers

    nv = tmp_path / "nvfp4"
    quantize_checkpoint(tiny_qwen3_moe, nv, QuantizeOptions(format="nvfp4", targets="all-linear"))
    plain = tmp_path / "plain"
    dequantize_checkpoint(nv, plain, torch.float32)
    model = transformers.AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32)
    deq = dict(dequantized_weights(nv))
    sd = model.state_dict()
    assert torch.equal(sd["model.layers.0.self_attn.q_proj.weight"], deq["model.layers.0.self_attn.q_proj"])
    # transformers 5 keeps experts fused: gate|up stacked per expert
    gate_up = sd["model.layers.1.mlp.experts.gate_up_proj"][3]
    assert torch.equal(gate_up[:32], deq["model.layers.1.mlp.experts.3.gate_proj"])
    assert torch.equal(gate_up[32:], deq["model.layers.1.mlp.experts.3.up_proj"])


def test_compress_exclude_never_covers_a_quantized_module():
    kept = [f"model.layers.{i}.self_attn.q_proj" for i in range(3)] + ["model.layers.0.mlp.experts.1.up_proj", "lm_head"]
    quantized = ["model.layers.0.mlp.experts.0.up_proj", "model.layers.1.mlp.experts.1.up_proj"]
    out = compress_exclude(kept, quantized)
    assert out == ["model.layers.*.self_attn.q_proj", "model.layers.0.mlp.experts.1.up_proj", "lm_head"]


def test_user_errors(tiny_qwen3_moe, tmp_path):
    code, out = run_cli(tiny_qwen3_moe, tmp_path / "a", "--format", "int3")
    assert code == 1 and "nvfp4 or fp8" in out and "Traceback" not in out
    code, out = run_cli(tiny_qwen3_moe, tmp_path / "a", "--format", "nvfp4", "--calib", "prompts.jsonl")
    assert code == 1 and "--calib" in out and "not implemented" in out
    code, out = run_cli(tmp_path / "missing", tmp_path / "a", "--format", "nvfp4")
    assert code == 1 and "does not exist" in out
    code, out = run_cli(tiny_qwen3_moe, tiny_qwen3_moe, "--format", "nvfp4")
    assert code == 1 and "must differ" in out
    nv = tmp_path / "nv"
    assert run_cli(tiny_qwen3_moe, nv, "--format", "nvfp4")[0] == 0
    code, out = run_cli(tiny_qwen3_moe, nv, "--format", "fp8")
    assert code == 1 and "already holds a checkpoint" in out
    code, out = run_cli(nv, tmp_path / "b", "--format", "fp8")
    assert code == 1 and "already NVFP4" in out
    with pytest.raises(ConfigError, match="nothing to quantize"):
        quantize_checkpoint(tiny_qwen3_moe, tmp_path / "c", QuantizeOptions(format="nvfp4", exclude=("*experts*",)))


def test_bad_weight_fails_cleanly(tiny_qwen3_moe, tmp_path):
    """A NaN in one expert: a clear error naming the tensor, and no half-written checkpoint."""
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    src.mkdir()
    for f in tiny_qwen3_moe.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.1.mlp.experts.3.down_proj.weight"][0, 0] = math.nan
    save_file(tensors, src / "model.safetensors")
    dst = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"experts\.3\.down_proj.*NaN"):
        quantize_checkpoint(src, dst, QuantizeOptions(format="nvfp4"))
    assert not list(dst.glob("*.safetensors*")) and not (dst / "config.json").exists()


def test_only_indexed_shards_are_read(tiny_qwen3_moe, tmp_path):
    """Published folders can hold stray shards the index does not list: they are not part of
    the checkpoint and must not leak into the output."""
    from safetensors.torch import save_file

    src = tmp_path / "src"
    src.mkdir()
    for f in tiny_qwen3_moe.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    (src / "model.safetensors").rename(src / "model-00001-of-00001.safetensors")
    names = list(read_all(src))
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: "model-00001-of-00001.safetensors" for n in names}})
    )
    save_file({"model.layers.0.mlp.experts.9.gate_proj.weight": torch.ones(32, 64)}, src / "stray-old.safetensors")
    dst = tmp_path / "out"
    s = quantize_checkpoint(src, dst, QuantizeOptions(format="nvfp4"))
    assert len(s.quantized) == 24
    assert not any("experts.9" in k for k in read_all(dst)) and not (dst / "stray-old.safetensors").exists()
