"""The offline API and the engine's configuration surface."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tenk import LLM, SamplingParams
from tenk.engine.config import EngineConfig
from tenk.engine.kv_cache import kv_block_bytes, kv_cache_num_blocks
from tenk.errors import ConfigError, TenkError
from tenk.models.config import ModelConfig


@pytest.fixture(scope="module")
def llm(tiny_moe):
    return LLM(tiny_moe, device="cpu", num_kv_blocks=128, max_num_seqs=8)


def test_generate_forms_and_order(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    prompts = ["Once upon a time", "The cat", "A very much longer prompt about many things"]
    outs = llm.generate(prompts, greedy, use_tqdm=True)
    assert [o.prompt_token_ids for o in outs] == [llm.get_tokenizer().encode(p) for p in prompts]
    assert all(len(o.outputs[0].token_ids) == 6 and o.finished for o in outs)
    tok = llm.get_tokenizer()
    assert outs[1].outputs[0].text == tok.decode(outs[1].outputs[0].token_ids)
    # The same prompts as token ids, as dicts, one by one: the same tokens.
    by_ids = llm.generate(prompt_token_ids=[o.prompt_token_ids for o in outs], sampling_params=greedy, use_tqdm=False)
    by_dict = llm.generate([{"prompt_token_ids": o.prompt_token_ids} for o in outs], greedy, use_tqdm=False)
    single = llm.generate(prompts[2], greedy, use_tqdm=False)
    want = [o.outputs[0].token_ids for o in outs]
    assert [o.outputs[0].token_ids for o in by_ids] == want
    assert [o.outputs[0].token_ids for o in by_dict] == want
    assert single[0].outputs[0].token_ids == want[2]
    # One SamplingParams per prompt.
    per = llm.generate(prompts[:2], [SamplingParams(max_tokens=2), SamplingParams(max_tokens=4)], use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in per] == [2, 4]
    with pytest.raises(ValueError, match="2 sampling_params for 3 prompts"):
        llm.generate(prompts, [greedy, greedy], use_tqdm=False)


def test_failed_batch_leaves_engine_clean(llm):
    with pytest.raises(ValueError, match="context length"):
        llm.generate(["fine", "x " * 5000], SamplingParams(max_tokens=4), use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_chat_uses_the_template(llm):
    tok = llm.get_tokenizer()
    conv = [{"role": "user", "content": "Hello!"}]
    out = llm.chat(conv, SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert out[0].prompt_token_ids == tok.encode(text, add_special_tokens=False)
    two = llm.chat([conv, conv + [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "?"}]],
                   SamplingParams(max_tokens=2), use_tqdm=False)
    assert len(two) == 2 and len(two[1].prompt_token_ids) > len(two[0].prompt_token_ids)


def test_unknown_option_and_bad_config(tiny_moe, tmp_path):
    with pytest.raises(ConfigError, match="unknown option"):
        LLM(tiny_moe, max_num_seq=4)
    with pytest.raises(ConfigError, match="neither a directory nor a preset"):
        EngineConfig(model=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="add --load-format dummy"):
        EngineConfig(model="tiny-moe")
    with pytest.raises(ConfigError, match="quantization must be one of"):
        EngineConfig(model=tiny_moe, quantization="int2")
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        EngineConfig(model=tiny_moe, max_model_len=10**6)
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        EngineConfig(model=tiny_moe, gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="max_num_seqs"):
        EngineConfig(model=tiny_moe, max_num_seqs=0)
    with pytest.raises(TenkError, match="dtype"):
        EngineConfig(model=tiny_moe, dtype="int3")
    cfg = EngineConfig(model=tiny_moe, device="cpu")
    assert cfg.max_model_len == ModelConfig.from_dir(tiny_moe).max_position_embeddings
    assert cfg.torch_dtype == torch.float32 and cfg.max_num_batched_tokens == 8192
    assert cfg.tokenizer == tiny_moe


def test_kv_cache_too_small_for_max_model_len(tiny_moe, caplog):
    with pytest.raises(ConfigError, match="fewer than max_model_len 512"):
        LLM(tiny_moe, device="cpu", num_kv_blocks=4, max_model_len=512)
    with caplog.at_level(logging.INFO, logger="tenk.engine.llm_engine"):
        small = LLM(tiny_moe, device="cpu", num_kv_blocks=4)  # max_model_len not given: lowered to fit
    assert small.engine.max_model_len == 64
    assert "KV cache: 64 tokens" in caplog.text


def test_kv_cache_num_blocks_sizing(tiny_moe):
    mc = ModelConfig.from_dir(tiny_moe)
    per = kv_block_bytes(mc, 16, torch.bfloat16)
    assert per == 2 * mc.num_layers * 16 * mc.num_kv_heads * mc.head_dim * 2
    assert kv_block_bytes(mc, 16, torch.bfloat16, tp_size=2) == per // 2
    assert kv_block_bytes(mc, 16, torch.bfloat16, tp_size=8) == per // mc.num_kv_heads  # replicated heads
    kw = dict(dtype=torch.bfloat16, block_size=16)
    assert kv_cache_num_blocks(mc, num_kv_blocks=7, **kw) == 7
    assert kv_cache_num_blocks(mc, kv_cache_memory_bytes=per * 10 + 5, **kw) == 10
    # GPU: 80 GiB at 0.9 with 30 GiB used -> 42 GiB of blocks
    gib = 1 << 30
    assert kv_cache_num_blocks(mc, total_bytes=80 * gib, used_bytes=30 * gib, gpu_memory_utilization=0.9, **kw) == int(
        (72 - 30) * gib // per
    )
    assert kv_cache_num_blocks(mc, total_bytes=10 * gib, used_bytes=30 * gib, **kw) == 0
    # CPU default: max_num_seqs full-length sequences, capped at 1 GiB
    small = kv_cache_num_blocks(mc, max_num_seqs=2, max_model_len=64, **kw)
    assert small * 16 >= 128
    assert kv_cache_num_blocks(mc, max_num_seqs=10**4, max_model_len=10**5, **kw) == gib // per


def test_engine_config_round_trip(tiny_moe):
    cfg = EngineConfig(model=tiny_moe, max_model_len=100, block_size=8, enable_prefix_caching=False)
    assert cfg.max_model_len == 100 and cfg.max_model_len_explicit
    assert "model" in EngineConfig.field_names() and "model_config" not in EngineConfig.field_names()
    json.dumps({k: getattr(cfg, k) for k in EngineConfig.field_names()})
