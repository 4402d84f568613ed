"""A real small model nobody here trained (SmolLM2-135M-Instruct, shipped as GGUF on PyPI):
tenk's greedy continuation equals transformers' token for token, and reads as English."""

from __future__ import annotations

import pytest
import torch

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The three primary colors are",
    "Once upon a time, there was a little",
]


@pytest.fixture(scope="module")
def reference(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    out = {}
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = hf.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)
        out[p] = (ids[0].tolist(), gen[0, ids.shape[1]:].tolist())
    return tok, out


def test_greedy_matches_transformers(smollm2_dir, reference):
    from tenk import LLM, SamplingParams

    tok, ref = reference
    llm = LLM(smollm2_dir, dtype="float32", device="cpu", max_model_len=256, max_num_seqs=8)
    outs = llm.generate(
        prompt_token_ids=[ref[p][0] for p in PROMPTS],
        sampling_params=SamplingParams(temperature=0.0, max_tokens=24),
        use_tqdm=False,
    )
    for p, o in zip(PROMPTS, outs):
        want = ref[p][1]
        got = o.outputs[0].token_ids
        # transformers stops at EOS; tenk too, so both lists end at the same place
        assert got == want, (p, tok.decode(got), tok.decode(want))
    paris = tok.decode(outs[0].outputs[0].token_ids)
    assert "Paris" in paris
    words = tok.decode(outs[3].outputs[0].token_ids).split()
    assert len(words) >= 8 and all(w.isascii() for w in words)
