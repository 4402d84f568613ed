"""Launch scripts: executable, valid bash, the right flags per engine, PCIe extras."""

from __future__ import annotations

import os
import subprocess

import pytest

from tenk.errors import ConfigError
from tenk.plan.emit import choose_layouts, emit_scripts
from tenk.plan.hardware import GpuSpec
from tenk.plan.planner import PlanConfig, make_plan
from tenk.plan.source import load_model_source


@pytest.fixture(scope="module")
def seed_plans():
    src = load_model_source("minimax-m2")
    out = {}
    for link in ("pcie", "nvlink"):
        gpu = GpuSpec(memory_bytes=96 << 30, hbm_bandwidth=1.79e12, peak_flops=440e12, interconnect=link)
        out[link] = make_plan(src, PlanConfig(gpus=4, gpu=gpu, quantizations=("nvfp4", "fp8")))
    return out


def _script(tmp_path, plan, engine, spec):
    (lp,) = choose_layouts(plan, [spec])
    (path,) = emit_scripts(engine, plan, [lp], tmp_path / engine)
    assert os.access(path, os.X_OK)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0  # it parses
    return path.read_text(), lp


def test_vllm_tp2dp2_pcie(tmp_path, seed_plans):
    text, lp = _script(tmp_path, seed_plans["pcie"], "vllm", "nvfp4:tp2dp2")
    assert 'vllm serve "$MODEL"' in text
    for flag in ("--tensor-parallel-size 2", "--data-parallel-size 2", "--gpu-memory-utilization 0.9",
                 "--max-num-seqs 256", f"--max-model-len {lp.max_model_len}", "--disable-custom-all-reduce"):
        assert flag in text
    assert "export NCCL_P2P_DISABLE=1" in text
    assert 'CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0,1,2,3}"' in text


def test_sglang_and_tenk_flags(tmp_path, seed_plans):
    text, _ = _script(tmp_path, seed_plans["pcie"], "sglang", "fp8:tp4")
    assert "python -m sglang.launch_server --model-path \"$MODEL\"" in text
    for flag in ("--tp 4", "--dp 1", "--mem-fraction-static 0.9", "--max-running-requests 256",
                 "--disable-custom-all-reduce"):
        assert flag in text
    text, _ = _script(tmp_path, seed_plans["nvlink"], "tenk", "nvfp4:tp2dp2")
    assert 'tenk serve "$MODEL"' in text
    for flag in ("--tp 2", "--dp 2", "--api-server-count 4", "--gpu-memory-utilization 0.9", "--max-num-seqs 256"):
        assert flag in text
    assert "NCCL_P2P_DISABLE" not in text and "--disable-custom-all-reduce" not in text  # NVLink: nothing extra


def test_script_runs_the_command_it_names(tmp_path, seed_plans):
    """Run the emitted script with a stand-in `vllm` on PATH that prints its arguments and env."""
    text, lp = _script(tmp_path, seed_plans["pcie"], "vllm", "nvfp4:tp2dp2")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "vllm"
    stub.write_text('#!/usr/bin/env bash\necho "ARGS $*"\necho "CVD $CUDA_VISIBLE_DEVICES P2P $NCCL_P2P_DISABLE"\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PATH=f"{bindir}:{env['PATH']}", MODEL="/models/m27-nvfp4", PORT="8040")
    script = tmp_path / "vllm" / "launch_vllm_nvfp4_tp2dp2.sh"
    out = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=10)
    assert out.returncode == 0, out.stderr
    assert "ARGS serve /models/m27-nvfp4 --tensor-parallel-size 2 --data-parallel-size 2" in out.stdout
    assert "--port 8040" in out.stdout and "CVD 0,1,2,3 P2P 1" in out.stdout
    # without MODEL a preset's script refuses to start, with a sentence
    env.pop("MODEL")
    out = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=10)
    assert out.returncode != 0 and "set MODEL to the nvfp4 checkpoint" in out.stderr


def test_default_choice_is_best_per_quantization(seed_plans):
    chosen = choose_layouts(seed_plans["pcie"], None)
    assert [lp.quantization for lp in chosen] == sorted({lp.quantization for lp in chosen}, key=[
        lp.quantization for lp in seed_plans["pcie"].fitting()].index)
    assert {lp.quantization for lp in chosen} == {"nvfp4", "fp8"}
    assert next(lp for lp in chosen if lp.quantization == "fp8").name == "tp4dp1"


def test_layout_errors(seed_plans):
    plan = seed_plans["pcie"]
    with pytest.raises(ConfigError, match="cannot run: does not fit"):
        choose_layouts(plan, ["fp8:tp2"])
    with pytest.raises(ConfigError, match="must look like"):
        choose_layouts(plan, ["2x2"])
    with pytest.raises(ConfigError, match="not among"):
        choose_layouts(plan, ["tp8"])
    assert {lp.quantization for lp in choose_layouts(plan, ["tp4"])} == {"nvfp4", "fp8"}
    with pytest.raises(ConfigError, match="--emit must be one of"):
        emit_scripts("trtllm", plan, plan.fitting()[:1], "/tmp/never")
