"""Interop with the `compressed-tensors` library (PyPI), both ways, through its own code:
its NVFP4 compressor writes a checkpoint that tenk reads, and tenk's ModelOpt output, converted
to its layout, loads and decompresses in it to the same weights tenk dequantizes."""

import json

import pytest
import torch
from torch import nn

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors import ModelCompressor  # noqa: E402
from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8  # noqa: E402
from compressed_tensors.entrypoints.convert.converters.modelopt_nvfp4 import ModelOptNvfp4Converter  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import dequantize  # noqa: E402
from compressed_tensors.quantization.quant_scheme import NVFP4  # noqa: E402
from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tenk.quant.convert import adapt_tensors, to_compressed_tensors  # noqa: E402
from tenk.quant.dequantize import dequantized_weights  # noqa: E402
from tenk.quant.export import export_compressed_tensors  # noqa: E402
from tenk.quant.formats import COMPRESSED_TENSORS, detect_quant_config, parse_quant_config  # noqa: E402
from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint  # noqa: E402
from tenk.quant.safetensors_io import TensorReader, checkpoint_tensors  # noqa: E402

# checkpoint-style module names (experts as Linear modules, as in Qwen3-MoE / Mixtral files)
SHAPES = {
    "model.layers.0.self_attn.q_proj": (64, 128),
    "model.layers.0.mlp.experts.0.gate_proj": (96, 128),
    "model.layers.0.mlp.experts.0.down_proj": (128, 96),
    "model.layers.0.mlp.gate": (4, 128),
    "lm_head": (40, 128),
}


def skeleton(shapes=SHAPES) -> nn.Module:
    root = nn.Module()
    for name, (n, k) in shapes.items():
        *parents, leaf = name.split(".")
        m = root
        for p in parents:
            if not hasattr(m, p):
                m.add_module(p, nn.Module())
            m = getattr(m, p)
        m.add_module(leaf, nn.Linear(k, n, bias=False, dtype=torch.bfloat16))
    return root


def random_weights(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(model.named_parameters())):
            # rows of different magnitude so blocks use the E4M3 range, some subnormal
            rows = torch.logspace(-4, 0, p.shape[0]).unsqueeze(1)
            p.copy_(torch.randn(p.shape, generator=g) * rows * (i + 1))


def ct_checkpoint(tmp_path):
    """A checkpoint written by compressed-tensors: its scale math, its NVFP4 compressor."""
    model = skeleton()
    random_weights(model, seed=0)
    qcfg = QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], **NVFP4)},
        ignore=["lm_head", "re:.*mlp.gate$"],
    )
    apply_quantization_config(model, qcfg, show_progress=False)
    for _, mod in model.named_modules():
        if getattr(mod, "quantization_scheme", None) is None:
            continue
        w = mod.weight.data.float()
        gs = generate_gparam(w.min(), w.max())
        groups = w.reshape(w.shape[0], -1, 16)
        scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), mod.quantization_scheme.weights, global_scale=gs)
        mod.weight_global_scale.data.copy_(gs)
        mod.weight_scale.data = scale
        mod.input_global_scale.data.fill_(448.0 * 6 / 3.5)  # as if calibrated on |x| <= 3.5
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    out = tmp_path / "ct"
    out.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    compressor.update_config(str(out))
    compressor.decompress_model(model)  # the library's own reading of what it wrote
    return out, {name: model.get_submodule(name).weight.detach().clone() for name in SHAPES}


def test_checkpoint_written_by_compressed_tensors_loads_identically(tmp_path):
    path, theirs = ct_checkpoint(tmp_path)
    q = detect_quant_config(path)
    assert q.checkpoint_format == COMPRESSED_TENSORS
    assert not q.is_quantized("model.layers.0.mlp.gate") and not q.is_quantized("lm_head")
    ours_bf16 = dict(dequantized_weights(path, torch.bfloat16))
    assert set(ours_bf16) == {n for n in SHAPES if q.is_quantized(n)}
    for name, w in ours_bf16.items():
        assert torch.equal(w, theirs[name]), name  # bit-identical in the library's dtype

    # fp32: the library's dequantize on fp32 inputs. Tenk multiplies by 1/global, the library
    # divides by global: the two roundings agree to the last bit or one ulp.
    ours = dict(dequantized_weights(path, torch.float32))
    with TensorReader() as r:
        raw = {i.name: r.read(i) for i in checkpoint_tensors(path)}
    args = parse_quant_config(json.loads((path / "config.json").read_text())["quantization_config"])
    assert args.group_size == 16
    for name, w in ours.items():
        packed = raw[f"{name}.weight_packed"]
        x = unpack_fp4_from_uint8(packed, packed.shape[0], packed.shape[1] * 2, torch.float32)
        weights_args = QuantizationScheme(targets=["Linear"], **NVFP4).weights
        ref = dequantize(x_q=x, scale=raw[f"{name}.weight_scale"].float(), args=weights_args,
                         global_scale=raw[f"{name}.weight_global_scale"], dtype=torch.float32)
        torch.testing.assert_close(w, ref, rtol=2.0**-22, atol=0)

    # renamed into tenk's (ModelOpt's) convention, input scales inverted
    adapted = dict(adapt_tensors(q, iter(raw.items())))
    m = "model.layers.0.self_attn.q_proj"
    assert adapted[f"{m}.weight"].dtype == torch.uint8
    assert adapted[f"{m}.weight_scale_2"].shape == ()
    assert adapted[f"{m}.weight_scale_2"].item() == pytest.approx(1 / raw[f"{m}.weight_global_scale"].item(), rel=1e-7)
    assert adapted[f"{m}.input_scale"].item() == pytest.approx(3.5 / (448 * 6), rel=1e-6)
    assert torch.equal(adapted["lm_head.weight"], raw["lm_head.weight"])


def test_tenk_output_converted_to_compressed_tensors_decompresses_identically(tmp_path):
    # a bf16 checkpoint with the same module names, quantized by `tenk quantize`
    src = tmp_path / "bf16"
    src.mkdir()
    model = skeleton()
    random_weights(model, seed=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "torch_dtype": "bfloat16"}))
    (src / "tokenizer_config.json").write_text("{}")
    modelopt = tmp_path / "modelopt"
    quantize_checkpoint(src, modelopt, QuantizeOptions(format="nvfp4", targets="all-linear"))
    ours = dict(dequantized_weights(modelopt, torch.bfloat16))
    assert set(ours) == {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.experts.0.gate_proj",
                         "model.layers.0.mlp.experts.0.down_proj"}

    # tenk's converter agrees with the library's own ModelOpt converter (up to [] vs [1] shapes)
    with TensorReader() as r:
        mo = {i.name: r.read(i) for i in checkpoint_tensors(modelopt)}
    theirs = ModelOptNvfp4Converter(ignore=["lm_head", "model.layers.0.mlp.gate"], targets=["re:.*"]).process(dict(mo))
    mine = dict(to_compressed_tensors(n, t, n.rpartition(".")[0] in ours) for n, t in mo.items())
    assert sorted(mine) == sorted(theirs)
    for n in mine:
        assert torch.equal(mine[n].view(-1).view(torch.uint8), theirs[n].reshape(-1).contiguous().view(torch.uint8)), n

    # the converted directory, loaded the way transformers loads compressed-tensors checkpoints
    out = tmp_path / "ct"
    export_compressed_tensors(modelopt, out)
    assert (out / "tokenizer_config.json").is_file()
    qc = QuantizationConfig.model_validate(json.loads((out / "config.json").read_text())["quantization_config"])
    loaded = skeleton()
    apply_quantization_config(loaded, qc, show_progress=False)
    compressor = ModelCompressor(quantization_config=qc)
    compressor.compress_model(loaded)
    with TensorReader() as r:
        state = {i.name: r.read(i) for i in checkpoint_tensors(out)}
    missing, unexpected = loaded.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    compressor.decompress_model(loaded)
    for name in SHAPES:
        w = loaded.get_submodule(name).weight
        expected = ours.get(name, model.get_submodule(name).weight)
        assert torch.equal(w, expected), name
