"""`tenk plan --kv-cache-dtype fp8`: the plan sizes KV at one byte per element with the engine's
own sizing code (so its figure is the engine's), and launch scripts pass the choice on in each
engine's spelling."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from tenk.cli.main import app
from tenk.plan.emit import choose_layouts, emit_scripts
from tenk.plan.hardware import GpuSpec
from tenk.plan.planner import PlanConfig, make_plan
from tenk.plan.source import load_model_source

from .conftest import write_model_dir
from .test_kv_matches_engine import _plan_one


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cpu_engine_fp8_kv_capacity_equals_plan(tiny_moe_dir, dtype):
    from tenk.engine.config import EngineConfig
    from tenk.engine.llm_engine import LLMEngine

    kv_bytes = 3 << 20
    common = dict(kv_cache_memory_bytes=kv_bytes, max_num_seqs=8, max_model_len=512)
    engine = LLMEngine(EngineConfig(model=tiny_moe_dir, device="cpu", dtype=dtype, load_format="dummy",
                                    kv_cache_dtype="fp8", block_size=16, **common))
    engine_tokens = engine.get_stats().kv_capacity_tokens
    lp = _plan_one(tiny_moe_dir, dtype=dtype, kv_cache_dtype="fp8", **common)
    assert lp.fits, lp.reason
    assert engine_tokens > 0 and abs(lp.kv_tokens_per_replica - engine_tokens) <= 0.03 * engine_tokens
    cache = engine.runner.kv_cache
    assert cache.dtype == torch.float8_e4m3fn and cache.numel() == lp.memory.kv_bytes  # one byte per element
    plain = _plan_one(tiny_moe_dir, dtype=dtype, **common)
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    assert lp.memory.kv_block_bytes * itemsize == plain.memory.kv_block_bytes
    assert lp.kv_tokens_per_replica // plain.kv_tokens_per_replica == itemsize


def test_gpu_plan_fp8_doubles_kv_and_halves_its_reads():
    src = load_model_source("qwen3-30b-a3b")
    gpu = GpuSpec(memory_bytes=80 << 30)
    plans = {kv: make_plan(src, PlanConfig(gpus=1, gpu=gpu, quantizations=("fp8",), kv_cache_dtype=kv))
             for kv in ("auto", "fp8")}
    (bf16,), (fp8,) = plans["auto"].layouts, plans["fp8"].layouts
    assert bf16.fits and fp8.fits
    assert fp8.memory.used_before_kv == bf16.memory.used_before_kv  # only the KV dtype differs
    assert fp8.memory.kv_block_bytes * 2 == bf16.memory.kv_block_bytes
    assert 2 * bf16.kv_tokens_per_replica <= fp8.kv_tokens_per_replica <= 2 * bf16.kv_tokens_per_replica + 16
    # more sequences fit at the planned context, and the decode roofline reads half the KV bytes per token
    assert fp8.seqs_at_context >= 2 * bf16.seqs_at_context and fp8.batch >= bf16.batch
    per_token = lambda lp: lp.step.kv_bytes / (lp.batch * 2048)
    assert per_token(fp8) * 2 == per_token(bf16)
    assert plans["fp8"].as_dict()["settings"]["kv_cache_dtype"] == "fp8"


@pytest.fixture(scope="module")
def fp8_plan():
    gpu = GpuSpec(memory_bytes=96 << 30, interconnect="pcie")
    return make_plan(load_model_source("minimax-m2"),
                     PlanConfig(gpus=4, gpu=gpu, quantizations=("nvfp4",), kv_cache_dtype="fp8_e4m3"))


@pytest.mark.parametrize("engine,flag", [("tenk", "--kv-cache-dtype fp8"), ("vllm", "--kv-cache-dtype fp8"),
                                         ("sglang", "--kv-cache-dtype fp8_e4m3")])
def test_scripts_pass_the_kv_cache_dtype(tmp_path, fp8_plan, engine, flag):
    (lp,) = choose_layouts(fp8_plan, ["tp2dp2"])
    (path,) = emit_scripts(engine, fp8_plan, [lp], tmp_path)
    text = path.read_text()
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert f"  {flag} \\\n" in text, text
    assert "fp8 KV cache" in text


def test_scripts_without_fp8_leave_it_out(tmp_path):
    plan = make_plan(load_model_source("minimax-m2"),
                     PlanConfig(gpus=4, gpu=GpuSpec(memory_bytes=96 << 30), quantizations=("nvfp4",)))
    for engine in ("tenk", "vllm", "sglang"):
        (path,) = emit_scripts(engine, plan, choose_layouts(plan, ["tp2dp2"]), tmp_path)
        assert "--kv-cache-dtype" not in path.read_text()


def test_plan_cli_kv_cache_dtype(tmp_path):
    runner = CliRunner()
    out = tmp_path / "plan.json"
    res = runner.invoke(app, ["plan", "minimax-m2", "--gpus", "4", "--gpu", "h100", "--kv-cache-dtype", "fp8",
                              "-q", "nvfp4", "--json", str(out), "--emit", "tenk", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["settings"]["kv_cache_dtype"] == "fp8"
    assert all("--kv-cache-dtype fp8" in p.read_text() for p in (tmp_path / "s").iterdir())
    res = runner.invoke(app, ["plan", "minimax-m2", "--gpus", "2", "--gpu", "h100", "--kv-cache-dtype", "fp4"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--kv-cache-dtype must be one of auto, fp8, fp8_e4m3, got 'fp4'" in res.output, res.output


# ----------------------------------------------------------------------------------- GPU

_PROBE = """
import json, sys
from tenk.engine.config import EngineConfig
from tenk.engine.llm_engine import LLMEngine
a = json.loads(sys.argv[1])
engine = LLMEngine(EngineConfig(model=a["model"], device="cuda", load_format="dummy", gpu_memory_utilization=0.9,
                                max_num_seqs=256, max_model_len=a["len"], kv_cache_dtype="fp8"))
import torch
print("RESULT " + json.dumps({"kv_tokens": engine.get_stats().kv_capacity_tokens, "total": torch.cuda.mem_get_info()[1]}))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_engine_fp8_kv_capacity_matches_plan(tmp_path):
    """The engine with CUDA graphs captured over an fp8 cache; the plan's KV figure within 3%."""
    # The probe sizes its cache from free memory: this process's CUDA context (~0.7 GiB) and any
    # tensors earlier GPU tests left would shrink it below what the plan computes for an idle GPU.
    if torch.cuda.is_initialized():
        pytest.skip("earlier tests in this process hold GPU memory: run tests/plan/test_kv_cache_dtype.py alone")
    model = write_model_dir(tmp_path / "minimax-m2", "minimax-m2", num_layers=6)
    args = dict(model=model, len=32768)
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True, text=True,
                         timeout=600, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.split("RESULT ", 1)[1])
    lp = _plan_one(model, memory_bytes=seen["total"], max_num_seqs=256, max_model_len=32768, kv_cache_dtype="fp8")
    assert abs(lp.kv_tokens_per_replica - seen["kv_tokens"]) <= 0.03 * seen["kv_tokens"]
