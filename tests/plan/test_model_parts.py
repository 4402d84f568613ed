"""Units, the interconnect and roofline terms, and the memory formula's ties to the engine."""

from __future__ import annotations

import pytest

from tenk.errors import ConfigError
from tenk.models.config import ModelConfig
from tenk.models.presets import get_preset
from tenk.plan import memory
from tenk.plan.hardware import INTERCONNECTS, GpuSpec
from tenk.plan.roofline import decode_step, experts_touched_fraction
from tenk.plan.units import parse_bandwidth, parse_memory, parse_tflops, tokens


def test_units():
    assert parse_memory("80GiB") == 80 << 30
    assert parse_memory("96GB") == 96 * 10**9
    assert parse_memory("97887MiB") == 97887 << 20
    assert parse_bandwidth("3.35TB/s") == pytest.approx(3.35e12)
    assert parse_bandwidth("900GB/s") == pytest.approx(900e9)
    assert parse_bandwidth("3.35") == pytest.approx(3.35e12)
    assert parse_tflops("790") == pytest.approx(790e12)
    assert parse_tflops("1.4PFLOPS") == pytest.approx(1.4e15)
    for bad in ("fast", "3.35TFLOPS"):
        with pytest.raises(ConfigError):
            parse_bandwidth(bad)
    with pytest.raises(ConfigError):
        parse_tflops("3TB/s")
    assert (tokens(142_336), tokens(1_620_000), tokens(812)) == ("142K", "1.62M", "812")


def test_ring_all_reduce():
    nv, pcie = INTERCONNECTS["nvlink"], INTERCONNECTS["pcie"]
    assert nv.all_reduce_seconds(1 << 20, 1) == 0
    # 2(t-1) steps of n/t bytes each: latency-bound when small, bandwidth-bound when large
    assert nv.all_reduce_seconds(8, 4) == pytest.approx(6 * nv.hop_latency, rel=1e-3)
    big = 1 << 30
    assert nv.all_reduce_seconds(big, 4) == pytest.approx(6 * nv.hop_latency + 1.5 * big / nv.link_bandwidth)
    assert pcie.all_reduce_seconds(big, 2) > 10 * nv.all_reduce_seconds(big, 2)


def test_experts_touched():
    mc = ModelConfig.from_hf(get_preset("minimax-m2"))
    assert experts_touched_fraction(mc, 1) == pytest.approx(8 / 256)
    assert experts_touched_fraction(mc, 256) > 0.999
    assert experts_touched_fraction(ModelConfig.from_hf(get_preset("llama-3-8b")), 1) == 1.0


def test_decode_step_terms():
    from tenk.models.checkpoint_specs import checkpoint_tensor_specs
    from tenk.plan.quant_schemes import make_scheme
    from tenk.plan.weights import kinds_for, weights_per_gpu

    hf = get_preset("qwen3-30b-a3b")
    mc = ModelConfig.from_hf(hf)
    kinds = kinds_for(checkpoint_tensor_specs(hf), mc, make_scheme("bf16"))
    h100 = GpuSpec(memory_bytes=80 << 30)
    w1, w2 = weights_per_gpu(kinds, mc, 1, "bfloat16", "bf16"), weights_per_gpu(kinds, mc, 2, "bfloat16", "bf16")
    kv_tok = mc.kv_bytes_per_token() // 1
    one = decode_step(mc, w1, h100, batch=1, context=1024, kv_bytes_per_token=kv_tok)
    many = decode_step(mc, w1, h100, batch=256, context=1024, kv_bytes_per_token=kv_tok)
    assert one.comm_s == 0 and one.bound == "memory"
    # batch 1 reads the dense part and 8 of 128 experts; batch 256 nearly all experts
    assert one.weight_bytes == pytest.approx(w1.dense + w1.experts * 8 / 128 + w1.embedding_row_bytes)
    assert many.weight_bytes > 10 * one.weight_bytes - 10 * w1.dense
    assert many.seconds > one.seconds and 256 / many.seconds > 5 / one.seconds  # batching amortises weights
    tp2 = decode_step(mc, w2, h100, batch=256, context=1024, kv_bytes_per_token=kv_tok // 2)
    assert tp2.comm_s > 0 and tp2.memory_s < many.memory_s
    pcie = decode_step(mc, w2, GpuSpec(memory_bytes=80 << 30, interconnect="pcie"), batch=256, context=1024,
                       kv_bytes_per_token=kv_tok // 2)
    assert pcie.comm_s > 3 * tp2.comm_s


def test_profile_shapes_follow_the_engine():
    from tenk.engine import model_runner

    assert memory._PROFILE_SEQ_LEN == model_runner._PROFILE_SEQ_LEN
    assert memory.profile_num_tokens(8192, 4096, 256) == (8192, 256)
    assert memory.profile_num_tokens(8192, 100, 4) == (400, 4)  # max_model_len x max_num_seqs caps it
    mc = ModelConfig.from_hf(get_preset("minimax-m2"))
    small = memory.activation_peak_bytes(mc, max_num_batched_tokens=8192, max_model_len=8192, max_num_seqs=256)
    big = memory.activation_peak_bytes(mc, max_num_batched_tokens=32768, max_model_len=8192, max_num_seqs=256)
    tp4 = memory.activation_peak_bytes(mc, max_num_batched_tokens=32768, max_model_len=8192, max_num_seqs=256, tp=4)
    assert 1 << 30 < small < big and tp4 < big


def test_graph_pool_beyond_the_activation_reservation():
    """Decode graphs alone: their pool comes out of the headroom. With the mixed-step graphs the
    pool is a forward of the whole token budget, inside the activation reservation, but held
    while a step's logits and sample need their share of it."""
    mc = ModelConfig.from_hf(get_preset("qwen3-30b-a3b"))
    kw = dict(max_num_seqs=256, max_model_len=4096, block_size=16)
    act = memory.activation_peak_bytes(mc, max_num_batched_tokens=8192, max_model_len=4096, max_num_seqs=256)
    decode = memory.cuda_graph_pool_bytes(mc, **kw)
    assert decode > memory.forward_peak_bytes(mc, 256, 1, 2)
    full = memory.cuda_graph_pool_bytes(mc, **kw, max_num_batched_tokens=8192, activation=act)
    forward = int(memory.forward_peak_bytes(mc, 8192, 1, 2) * memory._FORWARD_SLACK)
    logits = memory.logits_peak_bytes(mc, 0, 256, 1, 2)
    assert 0 < forward + logits - act < full < forward + logits - act + (64 << 20)  # static inputs: a few MiB
    static_only = memory.cuda_graph_pool_bytes(mc, **kw, max_num_batched_tokens=8192, activation=10 * act)
    assert 0 < static_only < (64 << 20)
