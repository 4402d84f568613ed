"""Acceptance: the KV capacity the engine allocates at start equals the plan's figure (within 3%).

CPU: the engine sizes its pool from kv_cache_memory_bytes; the plan, given the same settings,
must name the same number of tokens. GPU: the engine measures weights, context and its
profiling peak; the plan predicts them from config.json alone."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tenk.models.presets import get_preset
from tenk.plan.hardware import GpuSpec
from tenk.plan.planner import PlanConfig, make_plan
from tenk.plan.source import load_model_source

from .conftest import write_model_dir


def _plan_one(model_dir: str, **kw):
    cfg = PlanConfig(gpus=1, gpu=GpuSpec(memory_bytes=kw.pop("memory_bytes", 80 << 30)), quantizations=("bf16",),
                     tp_sizes=(1,), **kw)
    (lp,) = make_plan(load_model_source(model_dir), cfg).layouts
    return lp


@pytest.mark.parametrize("kv_bytes", [3 << 20, 5_000_000])
def test_cpu_engine_kv_capacity_equals_plan(tiny_moe_dir, kv_bytes):
    from tenk.engine.config import EngineConfig
    from tenk.engine.llm_engine import LLMEngine

    engine = LLMEngine(EngineConfig(
        model=tiny_moe_dir, device="cpu", dtype="float32", load_format="dummy", kv_cache_memory_bytes=kv_bytes,
        max_num_seqs=8, max_model_len=512, block_size=16,
    ))
    engine_tokens = engine.get_stats().kv_capacity_tokens
    lp = _plan_one(tiny_moe_dir, dtype="float32", kv_cache_memory_bytes=kv_bytes, max_num_seqs=8, max_model_len=512)
    assert lp.fits, lp.reason
    assert engine_tokens > 0
    assert abs(lp.kv_tokens_per_replica - engine_tokens) <= 0.03 * engine_tokens
    # and the pool the engine allocated is as large as the plan says, in bytes
    assert engine.runner.kv_cache.numel() * engine.runner.kv_cache.element_size() == lp.memory.kv_bytes


def test_cpu_plan_tracks_block_size_and_dtype(tiny_moe_dir):
    """A different block size or KV dtype changes the engine's count; the plan follows it."""
    from tenk.engine.config import EngineConfig
    from tenk.engine.llm_engine import LLMEngine

    for dtype, block in (("float32", 32), ("bfloat16", 16)):
        engine = LLMEngine(EngineConfig(
            model=tiny_moe_dir, device="cpu", dtype=dtype, load_format="dummy", kv_cache_memory_bytes=2 << 20,
            max_num_seqs=4, max_model_len=256, block_size=block,
        ))
        lp = _plan_one(tiny_moe_dir, dtype=dtype, block_size=block, kv_cache_memory_bytes=2 << 20, max_num_seqs=4,
                       max_model_len=256)
        assert lp.kv_tokens_per_replica == engine.get_stats().kv_capacity_tokens


# ----------------------------------------------------------------------------------- GPU

_ENGINE_PROBE = textwrap.dedent("""
    import json, sys, torch
    import tenk.engine.model_runner as mr
    from tenk.engine.config import EngineConfig
    from tenk.engine.llm_engine import LLMEngine
    seen = {}
    orig = mr.kv_cache_num_blocks
    def spy(mc, **kw):
        free, total = torch.cuda.mem_get_info()
        seen.update(total=kw.get("total_bytes"), used=kw.get("used_bytes"), nonfree=total - free,
                    allocated=torch.cuda.memory_allocated(), reserved=torch.cuda.memory_reserved())
        return orig(mc, **kw)
    mr.kv_cache_num_blocks = spy
    args = json.loads(sys.argv[1])
    engine = LLMEngine(EngineConfig(model=args["model"], device="cuda", load_format="dummy", enforce_eager=True,
                                    gpu_memory_utilization=args["util"], max_num_seqs=args["seqs"],
                                    max_model_len=args["len"], max_num_batched_tokens=args["mnbt"]))
    seen["kv_tokens"] = engine.get_stats().kv_capacity_tokens
    print("RESULT " + json.dumps(seen))
""")

GPU_CASES = [
    ("qwen3-30b-a3b", None, 256, 8192),  # the whole model in bf16: 57 GiB of weights
    ("minimax-m2", 6, 256, 8192),  # 6 of 62 layers; 200K vocab, full-width QK-norm
    ("minimax-m2", 6, 128, 16384),
    ("llama-3-8b", None, 512, 8192),  # dense
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset,layers,seqs,mnbt", GPU_CASES)
def test_gpu_engine_kv_capacity_matches_plan(tmp_path, preset, layers, seqs, mnbt):
    model = write_model_dir(tmp_path / preset, preset, num_layers=layers)
    max_len = min(32768, get_preset(preset)["max_position_embeddings"])
    args = dict(model=model, util=0.9, seqs=seqs, len=max_len, mnbt=mnbt)
    # A fresh process: the engine must see the GPU as a real start would, with nothing else on it,
    # so the blocks this pytest process cached for earlier GPU tests go back to the driver first
    gc.collect()
    torch.cuda.empty_cache()
    if torch.cuda.memory_reserved() > (1 << 30):
        pytest.skip("earlier tests in this process still hold GPU memory: run tests/plan/test_kv_matches_engine.py alone")
    out = subprocess.run([sys.executable, "-c", _ENGINE_PROBE, json.dumps(args)], capture_output=True, text=True,
                         timeout=600, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.split("RESULT ", 1)[1])
    total = seen["total"]
    lp = _plan_one(model, memory_bytes=total, gpu_memory_utilization=0.9, max_num_seqs=seqs, max_model_len=max_len,
                   max_num_batched_tokens=mnbt)
    m = lp.memory
    measured_activation = seen["used"] - seen["nonfree"]
    print(f"\n{preset} layers={layers} seqs={seqs} mnbt={mnbt}: engine {seen['kv_tokens']} tokens, plan "
          f"{lp.kv_tokens_per_replica}; weights+rope: engine {seen['allocated'] / 2**30:.3f} GiB plan "
          f"{(m.weights + m.rope_tables) / 2**30:.3f}; non-tensor: engine {(seen['nonfree'] - seen['reserved']) / 2**30:.3f} "
          f"GiB (reserved-allocated {(seen['reserved'] - seen['allocated']) / 2**30:.3f}) plan {m.context / 2**30:.3f}; "
          f"activation: engine {measured_activation / 2**30:.3f} GiB plan {m.activation / 2**30:.3f}")
    engine_tokens = seen["kv_tokens"]
    assert abs(lp.kv_tokens_per_replica - engine_tokens) <= 0.03 * engine_tokens
