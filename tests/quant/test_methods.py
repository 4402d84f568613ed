"""tenk running NVFP4 / FP8 weights computes exactly what the format says: the same logits, bit
for bit, as tenk running the dequantized weights in fp32, and the same greedy tokens as
transformers on those weights."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from tenk.kernels.attention import AttentionMetadata
from tenk.models.config import ModelConfig
from tenk.models.loader import load_model
from tenk.quant.convert import tensor_adapter
from tenk.quant.dequantize import dequantize_checkpoint
from tenk.quant.formats import parse_quant_config
from tenk.quant.methods import (
    Fp8LinearMethod,
    Fp8MoEMethod,
    Nvfp4LinearMethod,
    Nvfp4MoEMethod,
    quant_factory,
    weight_bytes_by_format,
)
from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint

SEQS = [torch.tensor([3, 17, 42, 99, 5, 250, 8]), torch.tensor([11]), torch.arange(13) * 19 % 256]


def load(path, load_format="auto"):
    cfg = ModelConfig.from_dir(path)
    q = parse_quant_config(cfg.quantization)
    return load_model(cfg, str(path), "cpu", torch.float32, load_format=load_format,
                      quant_factory=quant_factory(q), name_transform=tensor_adapter(q))


def logits(model, seqs=SEQS):
    lens = [len(s) for s in seqs]
    pos = torch.cat([torch.arange(n) for n in lens])
    with torch.no_grad():
        return model.compute_logits(model(torch.cat(seqs), pos, AttentionMetadata.for_prefill_without_cache(lens, "cpu")))


def greedy(model, prompt, n=12):
    seq = prompt.clone()
    for _ in range(n):
        seq = torch.cat([seq, logits(model, [seq])[-1].argmax()[None]])
    return seq[len(prompt):].tolist()


CASES = {
    "nvfp4-all-linear-qwen3": ("tiny_qwen3_moe", QuantizeOptions(format="nvfp4", targets="all-linear"), Nvfp4LinearMethod, Nvfp4MoEMethod),
    "nvfp4-experts-mixtral": ("tiny_mixtral", QuantizeOptions(format="nvfp4"), type(None), Nvfp4MoEMethod),
    "nvfp4-experts-minimax": ("tiny_minimax", QuantizeOptions(format="nvfp4"), type(None), Nvfp4MoEMethod),
    "fp8-tensor-qwen3": ("tiny_qwen3_moe", QuantizeOptions(format="fp8", targets="all-linear"), Fp8LinearMethod, Fp8MoEMethod),
    "fp8-block-qwen3": ("tiny_qwen3_moe_wide", QuantizeOptions(format="fp8", targets="all-linear", fp8_scheme="block"),
                        Fp8LinearMethod, Fp8MoEMethod),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    src_fixture, opts, linear_cls, moe_cls = CASES[request.param]
    src = request.getfixturevalue(src_fixture)
    root = tmp_path_factory.mktemp(request.param)
    quantize_checkpoint(src, root / "q", opts)
    dequantize_checkpoint(root / "q", root / "plain", torch.float32)
    return request.param, root / "q", root / "plain", linear_cls, moe_cls


def test_quantized_model_gives_the_dequantized_models_logits(case):
    name, qdir, plain, linear_cls, moe_cls = case
    qmodel, ref = load(qdir), load(plain)
    layer = qmodel.model.layers[0]
    assert isinstance(layer.mlp.experts.quant_method, moe_cls)
    if linear_cls is not type(None):
        assert isinstance(layer.self_attn.qkv_proj.quant_method, linear_cls)
        assert layer.self_attn.qkv_proj.weight.dtype in (torch.uint8, torch.float8_e4m3fn)
    else:  # experts-only checkpoint: attention stays in the model dtype
        assert layer.self_attn.qkv_proj.weight.dtype == torch.float32
    sizes, plain_sizes = weight_bytes_by_format(qmodel), weight_bytes_by_format(ref)
    fmt = name.split("-")[0]
    assert set(sizes) == {fmt, "float32"} and set(plain_sizes) == {"float32"}
    # 4.5 (NVFP4) or 8 bits (FP8) per quantized weight instead of fp32's 32
    assert sum(sizes.values()) < sum(plain_sizes.values()) * (0.8 if "experts" in name else 0.5)
    ours, theirs = logits(qmodel), logits(ref)
    assert torch.equal(ours, theirs), f"{name}: max diff {(ours - theirs).abs().max().item()}"


def test_greedy_tokens_match_transformers_on_dequantized_weights(case):
    from transformers import AutoModelForCausalLM

    name, qdir, plain, _, _ = case
    hf = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32).eval()
    prompt = torch.tensor([3, 17, 42, 99, 5])
    with torch.no_grad():
        ref = hf.generate(prompt[None], max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)[0, 5:]
    assert greedy(load(qdir), prompt) == ref.tolist(), name


def test_input_scales_are_optional_and_compressed_tensors_layout_loads(tiny_qwen3_moe, tmp_path):
    """A compressed-tensors copy of the same weights, with input scales on some modules only
    (the public MiniMax NVFP4 checkpoint misses a few), loads to the same logits."""
    from safetensors.torch import load_file, save_file

    from tenk.quant.export import export_compressed_tensors

    quantize_checkpoint(tiny_qwen3_moe, tmp_path / "q", QuantizeOptions(format="nvfp4", targets="all-linear"))
    export_compressed_tensors(tmp_path / "q", tmp_path / "ct")
    tensors = load_file(tmp_path / "ct" / "model.safetensors")
    for name in [n for n in tensors if n.endswith(".weight_global_scale")][::2]:
        tensors[name.replace("weight_global_scale", "input_global_scale")] = torch.tensor([448.0 * 6 / 2.5])
    save_file(tensors, tmp_path / "ct" / "model.safetensors")
    ct_model = load(tmp_path / "ct")
    assert isinstance(ct_model.model.layers[0].mlp.experts.quant_method, Nvfp4MoEMethod)
    scales = ct_model.model.layers[0].mlp.experts.w13_input_scale
    loaded = torch.isclose(scales, torch.tensor(2.5 / (448 * 6)), rtol=1e-6)
    assert loaded.any() and (scales[~loaded] == 1.0).all() and not loaded.all()
    dequantize_checkpoint(tmp_path / "ct", tmp_path / "ct_plain", torch.float32)
    assert torch.equal(logits(ct_model), logits(load(tmp_path / "ct_plain")))
    # 1 / (1 / g) is not always g in fp32: the round trip through the divisor convention may
    # move a global scale by an ulp, nothing more
    torch.testing.assert_close(logits(ct_model), logits(load(tmp_path / "q")), rtol=1e-5, atol=1e-5)


def test_dummy_weights_give_finite_logits(tiny_qwen3_moe, tmp_path):
    quantize_checkpoint(tiny_qwen3_moe, tmp_path / "q", QuantizeOptions(format="nvfp4", targets="all-linear"))
    out = logits(load(tmp_path / "q", load_format="dummy"))
    assert torch.isfinite(out).all() and out.std() > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, path, out_path):
    from tenk.parallel.launch import init_tp, shutdown_tp

    torch.set_num_threads(1)
    init_tp(rank, world, f"tcp://127.0.0.1:{port}")
    try:
        out = logits(load(path))
        if rank == 0:
            torch.save(out, out_path)
    finally:
        shutdown_tp()


def test_tensor_parallel_nvfp4_matches_one_rank(tiny_qwen3_moe, tmp_path):
    """TP=2: packed weights, block scales and per-shard global scales split like bf16 weights."""
    quantize_checkpoint(tiny_qwen3_moe, tmp_path / "q", QuantizeOptions(format="nvfp4", targets="all-linear"))
    ref = logits(load(tmp_path / "q"))
    out = tmp_path / "tp2.pt"
    mp.start_processes(_worker, args=(2, _free_port(), tmp_path / "q", out), nprocs=2, start_method="fork")
    assert (torch.load(out) - ref).abs().max().item() < 1e-4


def test_dummy_fp8_fill_works_in_chunks():
    """Random FP8 weights are made a few rows at a time (no fp32 copy of a whole expert tensor)."""
    from tenk.quant.methods import _fill_fp8_weight

    p = torch.nn.Parameter(torch.empty(4, 64, 32, dtype=torch.float8_e4m3fn), requires_grad=False)
    _fill_fp8_weight(p, torch.Generator().manual_seed(0), chunk_elems=100)  # 3 rows per chunk
    v = p.float()
    assert bool(torch.isfinite(v).all()) and 0.8 < float(v.std()) < 1.2
    rows = v.view(-1, 32)
    assert not torch.equal(rows[0], rows[3])  # chunks draw on, they do not repeat


def test_block_fp8_on_widths_off_the_block_grid_says_what_to_do():
    """SmolLM2-135M's fused qkv ([576, 192, 192] over 576 inputs) does not fit 128x128 blocks: the
    engine refuses it with the way out (per-tensor FP8), not a tensor-parallel hint a TP=1 user
    cannot follow alone."""
    from tenk.errors import ConfigError

    with pytest.raises(ConfigError, match=r"divisible by 128.*--fp8-scheme tensor"):
        Fp8LinearMethod("block").create_weights(torch.nn.Module(), 576, [576, 192, 192], torch.float32)
    Fp8LinearMethod("block").create_weights(torch.nn.Module(), 256, [128, 256], torch.float32)  # on the grid: fine
