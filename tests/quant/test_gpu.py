"""On a CUDA GPU: quantizing there gives the CPU's bits, and the quantized methods give the
dequantized model's logits in bf16 (up to summation order) through the GPU kernels."""

import time

import pytest
import torch

from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint, quantize_weight

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize(
    "opts",
    [QuantizeOptions(format="nvfp4"), QuantizeOptions(format="fp8"), QuantizeOptions(format="fp8", fp8_scheme="block")],
    ids=["nvfp4", "fp8", "fp8-block"],
)
def test_quantizing_on_the_gpu_gives_the_cpus_bits(opts):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(4096, 4096, generator=g) * torch.logspace(-6, 1, 4096).unsqueeze(1)).bfloat16()
    cpu = quantize_weight(w, opts)
    quantize_weight(w.cuda(), opts)  # warm up
    torch.cuda.synchronize()
    t = time.perf_counter()
    gpu = [x.cpu() for x in quantize_weight(w.cuda(), opts)]
    dt = time.perf_counter() - t
    print(f"{opts.format}/{opts.fp8_scheme}: {w.numel() / dt / 1e9:.2f} G weights/s on {torch.cuda.get_device_name()}")
    for a, b in zip(cpu, gpu):
        assert a.dtype == b.dtype and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("checkpoint", ["tiny_qwen3_moe", "tiny_qwen3_moe_wide"])
def test_nvfp4_model_on_gpu_matches_dequantized_bf16(checkpoint, request, tmp_path):
    """The wide checkpoint's experts (hidden and FFN 128) take the NVFP4 MoE kernels on expert
    tiles; the narrow one's FFN of 32 is below the kernels' K of 64 and takes the torch path."""
    from tenk.kernels.attention import AttentionMetadata
    from tenk.kernels.nvfp4_gemm import is_tiled
    from tenk.models.config import ModelConfig
    from tenk.models.loader import load_model
    from tenk.quant import parse_quant_config, quant_factory, tensor_adapter
    from tenk.quant.dequantize import dequantize_checkpoint

    source = request.getfixturevalue(checkpoint)
    quantize_checkpoint(source, tmp_path / "q", QuantizeOptions(format="nvfp4", targets="all-linear", device="cuda"))
    dequantize_checkpoint(tmp_path / "q", tmp_path / "plain", torch.bfloat16)

    def run(path):
        cfg = ModelConfig.from_dir(path)
        q = parse_quant_config(cfg.quantization)
        model = load_model(cfg, str(path), "cuda", torch.bfloat16, quant_factory=quant_factory(q), name_transform=tensor_adapter(q))
        experts = [m for m in model.modules() if hasattr(m, "w13_weight_scale")]
        tiled.extend(is_tiled(m.w13_weight, m.w13_weight_scale) and is_tiled(m.w2_weight, m.w2_weight_scale)
                     for m in experts)
        seqs = [torch.arange(9) * 7 % 256, torch.arange(4) + 3]
        lens = [len(s) for s in seqs]
        pos = torch.cat([torch.arange(n) for n in lens]).cuda()
        with torch.no_grad():
            meta = AttentionMetadata.for_prefill_without_cache(lens, "cuda")
            return model.compute_logits(model(torch.cat(seqs).cuda(), pos, meta))

    # The NVFP4 kernels dequantize exactly but sum in another order than the bf16 GEMMs.
    tiled = []
    ours, ref = run(tmp_path / "q"), run(tmp_path / "plain")
    assert tiled and all(tiled) == (checkpoint == "tiny_qwen3_moe_wide")
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-2
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean().item() > 0.9
