"""Shared fixtures: a tiny random Qwen3-MoE checkpoint (tenk's tiny-moe preset, weights from
transformers' own class) with tenk's tokenizer, and engines over it on the CPU in fp32."""

from __future__ import annotations

import json

import pytest
import torch


def write_tiny(path, preset: str = "tiny-moe", seed: int = 0) -> None:
    import transformers as tf

    from tenk.models.presets import get_preset
    from tenk.models.tokenizer_builder import write_tokenizer

    cfg = get_preset(preset)
    cfg.update(torch_dtype="float32", dtype="float32", max_position_embeddings=1024)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(tf.AutoConfig.from_pretrained(path)).float()
    # Larger than init weights: peaked next-token distributions, so greedy decoding has clear
    # winners and batch-composition rounding cannot flip an argmax.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    model.save_pretrained(path)
    write_tokenizer(path, vocab_size=cfg["vocab_size"], model_max_length=1024)


@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-moe")
    write_tiny(path, "tiny-moe")
    return str(path)


def engine_factory(model: str, **defaults):
    """make(**kw) -> LLMEngine on `model`, CPU fp32 and 256 KV blocks unless told otherwise."""
    from tenk.engine.config import EngineConfig
    from tenk.engine.llm_engine import LLMEngine

    def make(**kw):
        kw = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 256, **defaults, **kw}
        return LLMEngine(EngineConfig(model=model, **kw))

    return make


@pytest.fixture
def make_engine(tiny_moe):
    return engine_factory(tiny_moe)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # The tiny model's ops are microseconds long: one thread avoids OpenMP hand-offs, which
    # cost far more than the work, above all when other processes share the two cores.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
