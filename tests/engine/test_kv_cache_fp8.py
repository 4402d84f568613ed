"""`kv_cache_dtype="fp8"` (vLLM's --kv-cache-dtype): the engine stores K/V in e4m3, one byte per
element, so the same memory holds twice the tokens of bf16, and greedy decoding on a tiny
qwen3_moe stays with the unquantized cache wherever its top two logits are not near-tied."""

from __future__ import annotations

import logging
import random

import pytest
import torch

from tenk import LLM, SamplingParams
from tenk.engine.config import EngineConfig
from tenk.engine.kv_cache import kv_block_bytes
from tenk.errors import ConfigError
from tenk.models.config import ModelConfig

from ..models.hf_tiny import COMMON, save_tiny


@pytest.fixture(scope="module")
def tiny_qwen3_moe(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("qwen3-moe-fp8kv")
    save_tiny("qwen3_moe", path)
    return str(path)


def _generate(model: str, kv_cache_dtype: str, prompts):
    llm = LLM(model, device="cpu", dtype="float32", num_kv_blocks=128, max_model_len=256, kv_cache_dtype=kv_cache_dtype)
    sp = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=2)
    outs = [o.outputs[0] for o in llm.generate(prompt_token_ids=prompts, sampling_params=sp, use_tqdm=False)]
    return llm, outs


def test_fp8_cache_generates_the_unquantized_greedy_tokens(tiny_qwen3_moe, caplog):
    rng = random.Random(0)
    prompts = [[rng.randrange(3, COMMON["vocab_size"]) for _ in range(rng.randint(4, 60))] for _ in range(12)]
    _, exact = _generate(tiny_qwen3_moe, "auto", prompts)
    with caplog.at_level(logging.INFO, logger="tenk.engine.llm_engine"):
        llm, fp8 = _generate(tiny_qwen3_moe, "fp8", prompts)
    assert llm.engine.runner.kv_cache.dtype == torch.float8_e4m3fn
    assert "KV cache: 2048 tokens in float8_e4m3fn" in caplog.text
    compared, drift = 0, []
    for a, b in zip(exact, fp8):
        for ta, tb, la, lb in zip(a.token_ids, b.token_ids, a.logprobs, b.logprobs):
            top1, top2 = sorted(la.values(), reverse=True)[:2]
            if ta != tb:
                assert top1 - top2 < 0.2, f"fp8 picked {tb} over {ta}, whose lead was {top1 - top2:.3f}"
                break  # the contexts differ from here on
            compared += 1
            drift.append(abs(la[ta] - lb[tb]))
    assert compared >= 30, compared
    assert 0 < max(drift) < 0.15, max(drift)  # quantized (not bit-equal), yet close


def test_fp8_cache_holds_twice_the_bf16_tokens(tiny_qwen3_moe):
    mc = ModelConfig.from_dir(tiny_qwen3_moe)
    budget = 40 * kv_block_bytes(mc, 16, torch.bfloat16)
    caps = {}
    for kv in ("auto", "fp8"):
        llm = LLM(tiny_qwen3_moe, device="cpu", dtype="bfloat16", kv_cache_memory_bytes=budget, max_model_len=256,
                  kv_cache_dtype=kv)
        cache = llm.engine.runner.kv_cache
        assert cache.numel() * cache.element_size() == budget  # the same bytes either way
        caps[kv] = llm.engine.get_stats().kv_capacity_tokens
    assert caps == {"auto": 40 * 16, "fp8": 80 * 16}


def test_kv_cache_dtype_names(tiny_qwen3_moe):
    for name in ("auto", "fp8", "FP8_E4M3"):
        cfg = EngineConfig(model=tiny_qwen3_moe, device="cpu", kv_cache_dtype=name)
        assert cfg.kv_cache_torch_dtype == (torch.float32 if name == "auto" else torch.float8_e4m3fn)
    for bad in ("fp8_e5m2", "int8", ""):
        with pytest.raises(ConfigError) as exc:
            LLM(tiny_qwen3_moe, device="cpu", kv_cache_dtype=bad)
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith("kv_cache_dtype must be one of auto, fp8, fp8_e4m3"), msg


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp8_cache_on_gpu_graphs_match_eager_and_cpu(tiny_qwen3_moe):
    """Triton's fp8 store and attention under CUDA graphs (scales baked in), eagerly, and the CPU
    reference path agree on greedy tokens."""
    rng = random.Random(1)
    prompts = [[rng.randrange(3, COMMON["vocab_size"]) for _ in range(rng.randint(1, 80))] for _ in range(24)]
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    tokens = {}
    for name, kw in {"graphs": dict(device="cuda"), "eager": dict(device="cuda", enforce_eager=True),
                     "cpu": dict(device="cpu")}.items():
        llm = LLM(tiny_qwen3_moe, dtype="float32", num_kv_blocks=256, max_model_len=256, max_num_seqs=16,
                  kv_cache_dtype="fp8", **kw)
        if name == "graphs":
            assert llm.engine.runner.graph_runner is not None and llm.engine.runner.graph_runner.graphs
        assert llm.engine.runner.kv_cache.dtype == torch.float8_e4m3fn
        tokens[name] = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=sp,
                                                                      use_tqdm=False)]
        llm.close()
    assert tokens["graphs"] == tokens["eager"]
    same = sum(a == b for a, b in zip(tokens["graphs"], tokens["cpu"]))
    assert same >= len(prompts) - 2, f"only {same}/{len(prompts)} prompts agree between GPU and CPU"
