"""The engine runs NVFP4 / FP8 checkpoints made by `tenk quantize` and computes exactly what
the format says: greedy tokens equal those of the same engine on the dequantized fp32 weights,
and of transformers on them. `quantization="auto"` picks the format from the checkpoint."""

from __future__ import annotations

import pytest
import torch

from tenk.errors import ConfigError
from tenk.quant.dequantize import dequantize_checkpoint
from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint

from ..models.hf_tiny import save_tiny

PROMPTS = [[3, 17, 42, 99, 5], [7, 7, 300, 12], [250, 1, 2, 3, 4, 5, 6, 7, 8]]


def _greedy(path, **kw):
    from tenk import LLM, SamplingParams

    llm = LLM(str(path), device="cpu", dtype="float32", max_model_len=64, **kw)
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], llm


@pytest.mark.parametrize(
    "kind,fmt,targets",
    [("qwen3_moe", "nvfp4", "all-linear"), ("minimax_m2", "nvfp4", "experts"), ("mixtral", "fp8", "all-linear")],
)
def test_quantized_checkpoint_matches_its_dequantized_weights(kind, fmt, targets, tmp_path):
    from transformers import AutoModelForCausalLM

    src, q, deq = tmp_path / "src", tmp_path / "q", tmp_path / "deq"
    save_tiny(kind, src)
    quantize_checkpoint(src, q, QuantizeOptions(format=fmt, targets=targets))
    dequantize_checkpoint(q, deq, torch.float32)
    ours, llm = _greedy(q)
    assert any(type(m.quant_method).__name__.lower().startswith(fmt) for m in llm.engine.runner.model.modules()
               if getattr(m, "quant_method", None) is not None), "the checkpoint's format was not picked up"
    ref, _ = _greedy(deq)
    assert ours == ref
    hf = AutoModelForCausalLM.from_pretrained(deq, dtype=torch.float32).eval()
    for prompt, toks in zip(PROMPTS, ours):
        with torch.no_grad():
            gen = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
        assert gen[0, len(prompt):].tolist() == toks


def test_asking_for_another_format_than_the_checkpoint_is_an_error(tmp_path):
    save_tiny("qwen3_moe", tmp_path)
    with pytest.raises(ConfigError, match="tenk quantize"):
        _greedy(tmp_path, quantization="nvfp4")
