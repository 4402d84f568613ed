"""The GPU forward's Triton path (RMSNorm with fused residual add, RoPE, SiLU-and-mul, MoE routing) against the
torch path, through the model layers: the kernels run on CPU tensors in Triton's interpreter, forced
by the kernels' FORCE_TRITON switches."""

from __future__ import annotations

import pytest
import torch

from tenk.kernels import activation, qk_norm, qk_norm_rope, rmsnorm, rotary, routing
from tenk.kernels.attention import AttentionMetadata
from tenk.kernels.interpret import triton_interpreter
from tenk.models.config import ModelConfig
from tenk.models.layers.rotary import RotaryEmbedding
from tenk.models.loader import load_model

from .hf_tiny import save_tiny

_TRITON_OPS = (
    (rmsnorm, "rms_norm_triton"), (rmsnorm, "fused_add_rms_norm_triton"),
    (rotary, "apply_rotary_triton"), (activation, "silu_and_mul_triton"), (routing, "topk_route_triton"),
    (qk_norm, "full_width_qk_norm_triton"), (qk_norm_rope, "qk_norm_rope_triton"),
)


def _force_triton(monkeypatch) -> dict[str, int]:
    """Send every dispatcher to its Triton launcher; returns the launcher calls, counted by name."""
    calls: dict[str, int] = {}

    def counted(fn, name):
        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapper

    for module, name in _TRITON_OPS:
        monkeypatch.setattr(module, "FORCE_TRITON", True)
        monkeypatch.setattr(module, name, counted(getattr(module, name), name))
    return calls


def _logits(model, lens):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (sum(lens),), generator=g)
    pos = torch.cat([torch.arange(n) for n in lens])
    with torch.no_grad():
        return model.compute_logits(model(ids, pos, AttentionMetadata.for_prefill_without_cache(lens, "cpu")))


# qwen3_moe: per-head QK-norm and full RoPE (one fused launch a layer), one dense layer (SiLU-and-mul); minimax_m2: full-width
# QK-norm (q and k in one call per layer), partial RoPE, MoE only (its experts take fused_moe's own path).
@pytest.mark.parametrize("kind, ops", [
    ("qwen3_moe", {"rms_norm_triton": 1, "fused_add_rms_norm_triton": 4, "qk_norm_rope_triton": 2,
                   "silu_and_mul_triton": 1, "topk_route_triton": 1}),
    ("minimax_m2", {"rms_norm_triton": 1, "fused_add_rms_norm_triton": 4, "apply_rotary_triton": 2,
                    "topk_route_triton": 2, "full_width_qk_norm_triton": 2}),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_forward_matches_torch(kind, ops, dtype, tmp_path, monkeypatch):
    save_tiny(kind, tmp_path)
    model = load_model(ModelConfig.from_dir(tmp_path), str(tmp_path), "cpu", dtype)
    lens = [7, 1, 13, 4]
    ref = _logits(model, lens)
    calls = _force_triton(monkeypatch)
    with triton_interpreter():
        out = _logits(model, lens)
    assert calls == ops
    if dtype == torch.float32:
        assert (out - ref).abs().max().item() < 1e-5
    else:
        # The kernels round where the torch path rounds, so bf16 logits agree bit for bit but for a
        # rare flip from the fp32 sum order; one skipped rounding step changes most of them (>50%).
        assert (out != ref).float().mean().item() < 0.1


@pytest.mark.parametrize("triton_path", [False, True])
def test_rotary_layer_takes_flat_heads_in_place(triton_path, monkeypatch):
    """q/k as [T, heads*head_dim] views of a qkv buffer rotate in place, like their [T, heads, head_dim]
    views; partial rotary leaves the tail of each head alone."""
    T, hq, hkv, d, rot = 5, 4, 2, 16, 8
    qkv = torch.randn(T, (hq + 2 * hkv) * d, generator=torch.Generator().manual_seed(0)).bfloat16()
    pos = torch.tensor([0, 1, 5, 30, 2])
    rope = RotaryEmbedding(d, rot, 64, 1e6)
    heads = qkv.clone()
    q3, k3 = rope(pos, heads[:, : hq * d].view(T, hq, d), heads[:, hq * d : (hq + hkv) * d].view(T, hkv, d))
    if triton_path:
        _force_triton(monkeypatch)
    flat = qkv.clone()
    with triton_interpreter():
        q2, k2 = rope(pos, flat[:, : hq * d], flat[:, hq * d : (hq + hkv) * d])
    assert q2.shape == (T, hq * d) and q2.data_ptr() == flat.data_ptr()
    assert torch.equal(q2.view(T, hq, d), q3) and torch.equal(k2.view(T, hkv, d), k3)
    assert torch.equal(flat, heads)  # v and the unrotated tail of each head included
    assert not torch.equal(flat, qkv)
    assert torch.equal(flat.view(T, -1, d)[:, :, rot:], qkv.view(T, -1, d)[:, :, rot:])
