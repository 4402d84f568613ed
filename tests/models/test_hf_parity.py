"""tenk's models against transformers on tiny random checkpoints of every family."""

from __future__ import annotations

import pytest
import torch

from tenk.kernels.attention import AttentionMetadata
from tenk.models.config import ModelConfig
from tenk.models.loader import load_model

from .hf_tiny import KINDS, save_tiny


@pytest.fixture(scope="module", params=KINDS)
def tiny(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp(request.param)
    save_tiny(request.param, path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cfg = ModelConfig.from_dir(path)
    model = load_model(cfg, str(path), "cpu", torch.float32)
    return request.param, cfg, model, hf


def _tenk_logits(model, seqs):
    lens = [len(s) for s in seqs]
    ids = torch.cat(seqs)
    pos = torch.cat([torch.arange(n) for n in lens])
    with torch.no_grad():
        return model.compute_logits(model(ids, pos, AttentionMetadata.for_prefill_without_cache(lens, "cpu")))


def test_logits_match_transformers(tiny):
    kind, cfg, model, hf = tiny
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in (7, 1, 13, 4)]
    ours = _tenk_logits(model, seqs)
    with torch.no_grad():
        ref = torch.cat([hf(s[None]).logits[0] for s in seqs])
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4, kind


def test_greedy_32_tokens_match(tiny):
    kind, cfg, model, hf = tiny
    prompt = torch.tensor([3, 17, 42, 99, 5])
    with torch.no_grad():
        ref = hf.generate(prompt[None], max_new_tokens=32, do_sample=False, min_new_tokens=32, pad_token_id=0)[0, len(prompt):]
    seq = prompt.clone()
    for _ in range(32):
        nxt = _tenk_logits(model, [seq])[-1].argmax()
        seq = torch.cat([seq, nxt[None]])
    assert seq[len(prompt):].tolist() == ref.tolist(), kind


def test_config_traps():
    from .hf_tiny import _make

    mm = ModelConfig.from_hf(_make("minimax_m2").config.to_dict())
    assert (mm.rotary_dim, mm.qk_norm, mm.router, mm.router_correction_bias) == (8, "full", "sigmoid", True)
    qm = ModelConfig.from_hf(_make("qwen3_moe").config.to_dict())
    assert (qm.qk_norm, qm.norm_topk_prob, qm.moe_layers) == ("per_head", False, (0,))
