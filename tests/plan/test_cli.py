"""`tenk plan` from the shell: the ranked table, --json, --emit, and one-line user errors."""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from tenk.cli.main import app

runner = CliRunner()


def test_plan_preset_json_and_emit(tmp_path):
    out = tmp_path / "plan.json"
    res = runner.invoke(app, ["plan", "minimax-m2", "--gpus", "4", "--gpu-memory", "96GB", "--interconnect", "pcie",
                              "--hbm-bandwidth", "1.79TB/s", "--peak-tflops", "440", "--json", str(out),
                              "--emit", "vllm", str(tmp_path / "scripts"), "--layout", "nvfp4:tp2dp2,fp8:tp4"])
    assert res.exit_code == 0, res.output
    assert "tp2dp2" in res.output and "does not fit: needs 107.16 GiB of weights per GPU" in res.output
    data = json.loads(out.read_text())
    assert data["hardware"]["memory_bytes"] == 96 * 10**9 and data["hardware"]["interconnect"] == "pcie"
    fits = {(d["quantization"], d["layout"]) for d in data["layouts"] if d["fits"]}
    assert ("fp8", "tp4dp1") in fits and ("nvfp4", "tp2dp2") in fits and ("fp8", "tp2dp1") not in fits
    ranked = [d["est_output_tok_s"] for d in data["layouts"] if d["fits"]]
    assert ranked == sorted(ranked, reverse=True)
    tp2dp2 = next(d for d in data["layouts"] if d["layout"] == "tp2dp2" and d["quantization"] == "nvfp4")
    assert tp2dp2["kv_tokens_total"] == 2 * tp2dp2["kv_tokens_per_replica"] > 0
    m = tp2dp2["memory_per_gpu"]
    assert m["weights"] + m["rope_tables"] + m["cuda_context"] + m["activation_peak"] + m["kv_cache"] <= 0.9 * 96e9
    scripts = sorted(p.name for p in (tmp_path / "scripts").iterdir())
    assert scripts == ["launch_vllm_fp8_tp4dp1.sh", "launch_vllm_nvfp4_tp2dp2.sh"]
    assert all(os.access(tmp_path / "scripts" / s, os.X_OK) for s in scripts)


def test_plan_model_dir_defaults_model_in_scripts(tiny_moe_dir, tmp_path):
    res = runner.invoke(app, ["plan", tiny_moe_dir, "--gpus", "2", "--gpu", "h100", "-q", "auto,nvfp4",
                              "--emit", "tenk", str(tmp_path)])
    assert res.exit_code == 0, res.output
    auto = next(tmp_path.glob("launch_tenk_auto_*.sh")).read_text()
    assert f'MODEL="${{MODEL:-{tiny_moe_dir}}}"' in auto  # the directory holds these weights
    nv = next(tmp_path.glob("launch_tenk_nvfp4_*.sh")).read_text()
    assert 'MODEL="${MODEL:?set MODEL' in nv  # it does not hold NVFP4 weights


def test_user_errors_are_one_line():
    for args, words in (
        (["plan", "no-such-model", "--gpus", "2", "--gpu-memory", "80GiB"], "neither a model directory nor a preset"),
        (["plan", "minimax-m2", "--gpus", "2", "--gpu-memory", "eighty"], "cannot read GPU memory"),
        (["plan", "minimax-m2", "--gpus", "2", "--gpu-memory", "80GiB", "-q", "int3"], "unknown quantization"),
        (["plan", "minimax-m2", "--gpus", "2", "--gpu", "tpu"], "unknown --gpu"),
        (["plan", "minimax-m2", "--gpus", "2", "--gpu-memory", "80GiB", "--interconnect", "carrier-pigeon"], "--interconnect"),
        (["plan", "minimax-m2", "--gpus", "2", "--gpu-memory", "80GiB", "--autotune"], "must be a model directory"),
        (["plan", "minimax-m2", "--gpus", "2", "--gpu-memory", "80GiB", "--autotune", "-q", "nvfp4"], "--quantization auto"),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 1, (args, res.output)
        assert words in res.output and "Traceback" not in res.output, res.output
