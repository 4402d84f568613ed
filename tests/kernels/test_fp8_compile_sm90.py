"""The FP8 kernels' launches at MiniMax-M2 shapes under TP=2 (E 256, H 3072, I 768; attention
q|k|v 4096 x 3072, o 3072 x 3072) compile for an H100 (sm_90) without register spills and within
its shared memory, with the configs the heuristics pick. CPU only: the launchers run on CPU
tensors with the kernels replaced by recorders (tests/kernels/conftest.py), nothing executes."""

import pytest
import torch

from tenk.kernels import fp8_gemm as fg
from tenk.kernels import fp8_moe as fm
from tenk.kernels import nvfp4_gemm as ng  # its split-K reduce finishes the FP8 GEMM too
from tenk.kernels.configs.fp8 import dense_config, moe_config
from tests.kernels.conftest import align_kernels, assert_fits_sm90

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]
E, H, I, TOP_K = 256, 3072, 768, 8
TOKENS = [1, 64, 512, 8192]


@pytest.fixture
def sm90(monkeypatch, sm90_compile):
    """Compiles what a CUDA call would launch: bf16 activations take the inline-asm conversion."""
    monkeypatch.setattr(fg, "COMPILE_GPU_VARIANT", True)
    return sm90_compile


def _experts(scheme, experts):
    """Uninitialised E4M3 experts (a compile only needs shapes and dtypes) with their scales."""
    w13 = torch.empty(experts, 2 * I, H, dtype=torch.float8_e4m3fn)
    w2 = torch.empty(experts, H, I, dtype=torch.float8_e4m3fn)
    if scheme == "block":
        return w13, torch.ones(experts, 2 * I // 128, H // 128), w2, torch.ones(experts, H // 128, I // 128)
    return w13, torch.ones(experts, 2), w2, torch.ones(experts)


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("scheme", ["block", "tensor"])
def test_fp8_moe_compiles_for_sm90(sm90, scheme, tokens):
    cfg = moe_config(tokens, E, H, I, TOP_K)
    experts = 8  # the expert count only sizes the grid; the config comes from the real 256
    x = torch.empty(tokens, H, dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(experts)[:TOP_K] for _ in range(tokens)]).int()
    w13, s13, w2, s2 = _experts(scheme, experts)
    from tenk.kernels import nvfp4_moe

    results = sm90([fm, nvfp4_moe], lambda: fm.fp8_fused_moe(
        x, w13, s13, w2, s2, torch.full((tokens, TOP_K), 1.0 / TOP_K), ids, scheme, config=cfg))
    expected = ["_fp8_moe_gemm_kernel", "_combine_splits_kernel"]
    if not cfg.direct:
        expected += align_kernels(tokens * TOP_K)
    if cfg.w13.split_k > 1:
        expected.append("_silu_mul_reduce_kernel")
    assert_fits_sm90(results, expected)


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("scheme", ["block", "tensor"])
@pytest.mark.parametrize("n,shards", [(4096, [3072, 512, 512]), (3072, [3072])], ids=["qkv", "o"])
def test_fp8_gemm_compiles_for_sm90(sm90, scheme, tokens, n, shards):
    k = 3072
    cfg = dense_config(tokens, n, k)
    if cfg.impl == "dequant":
        pytest.skip("dequantize + cuBLAS: no Triton launch")
    x = torch.empty(tokens, k, dtype=torch.bfloat16)
    w = torch.empty(n, k, dtype=torch.float8_e4m3fn)
    s = torch.ones(n // 128, k // 128) if scheme == "block" else torch.ones(len(shards))
    results = sm90([fg, ng], lambda: fg.fp8_gemm(x, w, s, scheme, shards, torch.empty(n, dtype=torch.bfloat16),
                                                     config=cfg))
    assert_fits_sm90(results, ["_fp8_gemm_kernel"] + (["_split_reduce_kernel"] if cfg.split_k > 1 else []))


def test_fp8_gemm_fp16_and_channel_compile(sm90):
    x = torch.empty(16, 3072, dtype=torch.float16)
    w = torch.empty(3072, 3072, dtype=torch.float8_e4m3fn)
    cfg = dense_config(16, 3072, 3072)
    results = sm90([fg, ng], lambda: fg.fp8_gemm(x, w, torch.ones(3072), "channel", config=cfg))
    assert_fits_sm90(results, ["_fp8_gemm_kernel"] + (["_split_reduce_kernel"] if cfg.split_k > 1 else []))
