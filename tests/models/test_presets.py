"""Presets (real models' shapes), tenk's offline tokenizer, and how both read in transformers."""

from __future__ import annotations

import json
import time

import pytest

from tenk.errors import ConfigError
from tenk.models.checkpoint_specs import checkpoint_tensor_specs
from tenk.models.config import ModelConfig
from tenk.models.presets import PRESETS, TINY_PRESETS, get_preset
from tenk.models.tokenizer_builder import (CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer, train_tokenizer,
                                           write_tokenizer)

# Published sizes: total and activated parameters (embeddings and lm_head included).
PUBLISHED = {
    "qwen3-30b-a3b": (30.5e9, 3.3e9),
    "qwen3-235b-a22b": (235e9, 22e9),
    "minimax-m2": (229e9, 11e9),  # "10B active" counts neither embedding table
    "mixtral-8x7b": (46.7e9, 12.9e9),
    "llama-3-8b": (8.03e9, 8.03e9),
}


def test_preset_list():
    for name in ("qwen3-30b-a3b", "qwen3-235b-a22b", "minimax-m2", "mixtral-8x7b", "llama-3-8b",
                 "tiny-moe", "tiny-minimax", "tiny-llama"):
        assert name in PRESETS
    assert set(TINY_PRESETS) >= {"tiny-moe", "tiny-minimax", "tiny-llama"}


@pytest.mark.parametrize("name", PRESETS)
def test_model_config_reads_every_preset(name):
    hf = get_preset(name)
    cfg = ModelConfig.from_hf(hf)
    assert cfg.model_type == hf["model_type"]
    assert cfg.num_layers == hf["num_hidden_layers"]
    assert cfg.rope_theta == hf["rope_theta"] == hf["rope_parameters"]["rope_theta"]
    assert cfg.torch_dtype == "bfloat16"
    # bos/eos/pad must be tokens of the tokenizer a checkpoint of this preset gets
    assert cfg.bos_token_id == 0 and cfg.eos_token_ids == (2,) and hf["pad_token_id"] == 0


def test_real_shapes():
    q30 = ModelConfig.from_hf(get_preset("qwen3-30b-a3b"))
    assert (q30.num_layers, q30.hidden_size, q30.num_heads, q30.num_kv_heads, q30.head_dim) == (48, 2048, 32, 4, 128)
    assert (q30.num_experts, q30.num_experts_per_tok, q30.moe_intermediate_size, q30.vocab_size) == (128, 8, 768, 151936)
    assert q30.norm_topk_prob and q30.qk_norm == "per_head" and q30.moe_layers == tuple(range(48))
    assert (q30.rms_norm_eps, q30.rope_theta, q30.max_position_embeddings) == (1e-6, 1e6, 40960)
    assert not q30.tie_word_embeddings

    q235 = ModelConfig.from_hf(get_preset("qwen3-235b-a22b"))
    assert (q235.num_layers, q235.hidden_size, q235.num_heads, q235.num_kv_heads, q235.head_dim) == (94, 4096, 64, 4, 128)
    assert (q235.num_experts, q235.num_experts_per_tok, q235.moe_intermediate_size) == (128, 8, 1536)

    mm = ModelConfig.from_hf(get_preset("minimax-m2"))
    assert (mm.num_layers, mm.hidden_size, mm.num_heads, mm.num_kv_heads, mm.head_dim) == (62, 3072, 48, 8, 128)
    assert (mm.num_experts, mm.num_experts_per_tok, mm.moe_intermediate_size, mm.vocab_size) == (256, 8, 1536, 200064)
    assert mm.rotary_dim == 64 and mm.rope_theta == 5e6 and mm.qk_norm == "full"
    assert mm.router == "sigmoid" and mm.router_correction_bias and mm.rms_norm_eps == 1e-6
    assert mm.max_position_embeddings == 196608 and not mm.tie_word_embeddings
    assert mm.kv_bytes_per_token() == 248 * 1024  # DESIGN.md: 248 KiB per token in bf16
    hf = get_preset("minimax-m2")
    assert hf["rope_parameters"]["partial_rotary_factor"] == 0.5 and hf["qk_norm_type"] == "per_layer"

    mx = ModelConfig.from_hf(get_preset("mixtral-8x7b"))
    assert (mx.num_layers, mx.hidden_size, mx.num_heads, mx.num_kv_heads, mx.num_experts, mx.num_experts_per_tok) == (32, 4096, 32, 8, 8, 2)
    assert (mx.moe_intermediate_size, mx.vocab_size, mx.rope_theta, mx.rms_norm_eps) == (14336, 32000, 1e6, 1e-5)

    ll = ModelConfig.from_hf(get_preset("llama-3-8b"))
    assert (ll.num_layers, ll.hidden_size, ll.num_heads, ll.num_kv_heads, ll.intermediate_size) == (32, 4096, 32, 8, 14336)
    assert (ll.vocab_size, ll.rope_theta, ll.rms_norm_eps, ll.is_moe) == (128256, 5e5, 1e-5, False)

    tm = ModelConfig.from_hf(get_preset("tiny-minimax"))
    assert tm.rotary_dim == tm.head_dim // 2 and tm.qk_norm == "full" and tm.router == "sigmoid"


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_counts_match_published_sizes(name):
    hf = get_preset(name)
    cfg = ModelConfig.from_hf(hf)
    total = sum(s.numel for s in checkpoint_tensor_specs(hf))
    idle = 0
    if cfg.is_moe:  # experts a token does not visit
        idle = len(cfg.moe_layers) * (cfg.num_experts - cfg.num_experts_per_tok) * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    want_total, want_active = PUBLISHED[name]
    assert abs(total - want_total) / want_total < 0.01
    assert abs(total - idle - want_active) / want_active < 0.03


@pytest.mark.parametrize("name", PRESETS)
def test_transformers_reads_presets_the_same_way(name):
    """transformers' own config and rotary embedding agree with ModelConfig (partial RoPE included)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = get_preset(name, num_layers=1)
    tcfg = AutoConfig.for_model(**hf)
    ours = ModelConfig.from_hf(hf)
    assert tcfg.rope_parameters["rope_theta"] == ours.rope_theta
    assert tcfg.head_dim == ours.head_dim and tcfg.vocab_size == ours.vocab_size
    assert tcfg.dtype == torch.bfloat16
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tcfg)
    assert model.model.rotary_emb.inv_freq.numel() * 2 == ours.rotary_dim


def test_get_preset_returns_fresh_copies_and_cuts_layers():
    a = get_preset("tiny-moe")
    a["rope_parameters"]["rope_theta"] = 1.0
    assert get_preset("tiny-moe")["rope_parameters"]["rope_theta"] == 1e6
    cut = get_preset("qwen3-235b-a22b", num_layers=3)
    assert cut["num_hidden_layers"] == 3 and cut["max_window_layers"] == 3
    with pytest.raises(ConfigError, match="unknown preset 'qwen9'"):
        get_preset("qwen9")
    with pytest.raises(ConfigError, match="at least 1"):
        get_preset("tiny-moe", num_layers=0)


# ----------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    write_tokenizer(out, 512, model_max_length=2048, cache_dir=out / "cache")
    return out


def test_tokenizer_loads_in_transformers_and_round_trips(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert len(tok) == 512
    assert tok.convert_ids_to_tokens([0, 1, 2]) == list(SPECIAL_TOKENS)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 0)
    for text in ("The capital of France is Paris.", "  two  spaces\nand a tab\t, 3.14159, 2024-03-15",
                 "Ünïcødé, 中文, emoji 🙂 and bytes: \x00\x7f"):
        ids = tok(text).input_ids
        assert max(ids) < 512
        assert tok.decode(ids) == text
    # merges learned from the shipped prose: the commonest words are one token each
    assert len(tok(" the and of to").input_ids) == 4
    # special tokens in text stay one token each
    assert tok("<|im_start|>user").input_ids[0] == 1


def test_tokenizer_chat_template(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHAT_TEMPLATE  # older engines read it from here
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = tok(text).input_ids
    assert ids.count(1) == 3 and ids.count(2) == 2 and tok.decode(ids) == text


def test_tokenizer_training_is_fast_deterministic_and_cached(tmp_path):
    t0 = time.perf_counter()
    a = train_tokenizer(4096)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"training took {elapsed:.2f}s"
    assert a.get_vocab_size() == 4096
    assert train_tokenizer(4096).to_str() == a.to_str()

    first = build_tokenizer(1024, cache_dir=tmp_path)
    stamp = (first / "tokenizer.json").stat().st_mtime_ns
    again = build_tokenizer(1024, cache_dir=tmp_path)
    assert again == first and (again / "tokenizer.json").stat().st_mtime_ns == stamp  # not retrained
    assert build_tokenizer(512, cache_dir=tmp_path) != first  # keyed by vocab size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no temp dirs left


def test_tokenizer_vocab_limits():
    with pytest.raises(ConfigError, match="at least 259"):
        train_tokenizer(100)


def test_full_vocab_tokenizer_decodes_every_id_to_text():
    """Past the corpus's ~4,200 trained tokens the vocabulary grows by synthetic merges, so a
    random-weight model's samples decode to text (clients that time the first text see the first
    token) and prose still tokenizes and decodes exactly."""
    small, big = train_tokenizer(4096), train_tokenizer(151_936)
    assert big.get_vocab_size() == 151_936 and train_tokenizer(151_936).to_str() == big.to_str()
    assert big.get_vocab()["Ġthe"] == small.get_vocab()["Ġthe"]  # trained ids are kept
    ids = list(range(4096, 151_936, 97)) + [151_935]
    texts = [big.decode([i]) for i in ids]
    assert all(t and "\ufffd" not in t for t in texts)
    text = "The quick brown fox jumps over the lazy dog, twice."
    assert big.decode(big.encode(text).ids) == text
    pieces = big.encode(texts[0] + texts[1]).ids  # synthetic pieces are reachable from text too
    assert big.decode(pieces) == texts[0] + texts[1]
