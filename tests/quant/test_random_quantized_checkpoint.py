"""`tenk random-checkpoint --quantization`: random codes and scales written straight in the
layout `tenk quantize` produces, so the same tensors, dtypes, shapes and quantization config
come out as quantizing a bf16 random checkpoint, and tenk loads and runs it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from tenk.cli.main import app
from tenk.models.checkpoint_writer import write_random_checkpoint
from tenk.models.presets import get_preset
from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint
from tenk.quant.random_weights import quantized_nbytes, write_random_quantized_checkpoint


def _tensors(path) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                t = st.get_slice(name)
                out[name] = (t.get_dtype(), tuple(t.get_shape()))
    return out


CASES = [
    ("tiny-moe", QuantizeOptions(format="nvfp4")),
    ("tiny-minimax", QuantizeOptions(format="nvfp4", targets="all-linear")),
    ("tiny-minimax", QuantizeOptions(format="fp8", fp8_scheme="block")),
    ("tiny-moe", QuantizeOptions(format="fp8")),
]


@pytest.mark.parametrize("preset,opts", CASES, ids=["nvfp4-experts", "nvfp4-all", "fp8-block", "fp8-tensor"])
def test_same_layout_as_quantizing_a_bf16_checkpoint(tmp_path, preset, opts):
    cfg = get_preset(preset)
    write_random_checkpoint(cfg, tmp_path / "bf16")
    quantize_checkpoint(tmp_path / "bf16", tmp_path / "quantized", opts)
    written = write_random_quantized_checkpoint(cfg, tmp_path / "direct", opts)
    assert _tensors(tmp_path / "direct") == _tensors(tmp_path / "quantized")
    assert written.total_bytes == quantized_nbytes(cfg, opts)
    qc = lambda p: json.loads((p / "config.json").read_text())["quantization_config"]
    drop = lambda d: {k: v for k, v in d.items() if k != "producer"}
    assert drop(qc(tmp_path / "direct")) == drop(qc(tmp_path / "quantized"))
    hq = [(p / "hf_quant_config.json") for p in (tmp_path / "direct", tmp_path / "quantized")]
    assert [h.exists() for h in hq] == [opts.format == "nvfp4" or opts.fp8_scheme == "tensor"] * 2


@pytest.mark.parametrize("preset,opts", [CASES[0], CASES[3]], ids=["nvfp4", "fp8"])
def test_loads_and_runs_with_sane_weights(tmp_path, preset, opts):
    from tenk import LLM, SamplingParams

    write_random_quantized_checkpoint(get_preset(preset), tmp_path, opts, dtype="fp32")
    llm = LLM(str(tmp_path), device="cpu", dtype="float32", num_kv_blocks=64, max_model_len=128)
    assert llm.engine.config.quantization == "auto"
    out = llm.generate(prompt_token_ids=[[5, 6, 7, 8]], sampling_params=SamplingParams(max_tokens=6, ignore_eos=True,
                                                                                     logprobs=1), use_tqdm=False)
    steps = out[0].outputs[0].logprobs
    lps = [float(v if isinstance(v, float) else v.logprob) for step in steps for v in step.values()]
    assert len(steps) == 6 and all(torch.isfinite(torch.tensor(lps)))
    # dequantized experts come out near normal(0, 0.02), like the bf16 writer's
    from tenk.quant.dequantize import dequantized_weights

    ws = dict(dequantized_weights(tmp_path))
    expert = next(w for n, w in ws.items() if ".experts.0." in n)
    assert 0.01 < float(expert.float().std()) < 0.04


def test_cli_writes_nvfp4_and_refuses_bad_format(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["random-checkpoint", "tiny-moe", str(tmp_path / "a"), "--quantization", "nvfp4"])
    assert res.exit_code == 0, res.output
    assert "in NVFP4" in res.output and (tmp_path / "a" / "hf_quant_config.json").exists()
    res = runner.invoke(app, ["random-checkpoint", "tiny-moe", str(tmp_path / "b"), "--quantization", "int4"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--quantization must be none, nvfp4 or fp8, got 'int4'" in res.output
    # a bf16 rewrite of the same folder drops the stale quantization description
    res = runner.invoke(app, ["random-checkpoint", "tiny-moe", str(tmp_path / "a"), "--force"])
    assert res.exit_code == 0 and not (tmp_path / "a" / "hf_quant_config.json").exists()
