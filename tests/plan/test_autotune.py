"""Autotune: start layouts, bench each with the real client over real HTTP, pick the best
measured - against fake servers of known speed, and once against real `tenk serve` on CPU."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest

from tenk.bench.fake_server import FakeServer, FakeServerConfig
from tenk.plan.autotune import AutotuneConfig, autotune, best_trial, candidate_layouts, serve_command
from tenk.plan.hardware import GpuSpec
from tenk.plan.planner import PlanConfig, make_plan
from tenk.plan.source import load_model_source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_plan():
    # 2 "GPUs" of 4 GiB: tp1dp1, tp1dp2 and tp2dp1 all fit
    return make_plan(load_model_source("tiny-moe"),
                     PlanConfig(gpus=2, gpu=GpuSpec(memory_bytes=4 << 30), quantizations=("bf16",), max_num_seqs=8))


@dataclass
class _Fleet:
    urls: list
    servers: list
    stopped: bool = False

    def stop(self):
        for s in self.servers:
            s.stop()
        self.stopped = True


class FakeLauncher:
    """Each replica is a fake OpenAI server streaming one token per `delay` seconds."""

    def __init__(self, delays: dict[str, float]):
        self.delays, self.calls, self.fleets = delays, [], []

    def __call__(self, lp, gpu_ids, port):
        self.calls.append((lp.name, list(gpu_ids)))
        if lp.name not in self.delays:
            raise RuntimeError("out of memory while loading (on purpose)")
        servers = [FakeServer(FakeServerConfig(chunk_delay=self.delays[lp.name])) for _ in range(lp.dp)]
        fleet = _Fleet([s.start() for s in servers], servers)
        self.fleets.append(fleet)
        return fleet


def _cfg(gpu_ids, **kw):
    kw = dict(dict(concurrency=(4, 8), input_len=8, output_len=8, num_prompts=16, warmup=0, workers=1), **kw)
    return AutotuneConfig(gpu_ids=gpu_ids, base_port=_free_port(), **kw)


def test_picks_the_measured_best_not_the_estimate(tiny_plan):
    fitting = tiny_plan.fitting()
    names = [lp.name for lp in fitting]
    assert set(names) == {"tp1dp1", "tp1dp2", "tp2dp1"}
    # make the layout the estimate likes least the fastest one in reality
    slowest_est = names[-1]
    delays = {n: 0.02 for n in names}
    delays[slowest_est] = 0.002
    launcher = FakeLauncher(delays)
    result = autotune(fitting, launcher, _cfg([0, 1]))
    assert result.best is not None and result.best.layout.name == slowest_est
    assert all(t.ok for t in result.trials)
    for t in result.trials:
        assert [c for c, _ in t.levels] == [4, 8]
    by_name = {t.layout.name: t for t in result.trials}
    assert by_name[slowest_est].peak_tok_s > 3 * max(t.peak_tok_s for t in result.trials if t is not by_name[slowest_est])
    # each layout got the GPUs it needs, and every server was stopped
    assert dict(launcher.calls) == {lp.name: list(range(lp.gpus)) for lp in fitting}
    assert all(f.stopped for f in launcher.fleets)


def test_a_layout_that_fails_is_recorded_and_skipped(tiny_plan):
    fitting = tiny_plan.fitting()
    ok = fitting[1].name
    launcher = FakeLauncher({ok: 0.004})  # every other layout "runs out of memory"
    result = autotune(fitting[:2], launcher, _cfg([0, 1], concurrency=(4,)))
    failed = [t for t in result.trials if not t.ok]
    assert len(failed) == 1 and "did not start" in failed[0].error and "out of memory" in failed[0].error
    assert result.best.layout.name == ok
    assert result.as_dict()["best"]["layout"] == ok


def test_candidates_respect_the_gpus_at_hand(tiny_plan):
    one = candidate_layouts(tiny_plan.fitting(), num_gpus=1, top_k=3)
    assert [lp.name for lp in one] == ["tp1dp1"]
    assert len(candidate_layouts(tiny_plan.fitting(), num_gpus=2, top_k=2)) == 2
    assert best_trial([]) is None


@pytest.mark.slow
def test_real_tenk_serve_on_cpu(tiny_moe_dir, tmp_path):
    """A real `tenk serve` (on CPU: each 'GPU' is a CPU process), benched by the real client."""
    from tenk.plan.launcher import TenkServeLauncher

    src = load_model_source(tiny_moe_dir)
    plan = make_plan(src, PlanConfig(gpus=1, gpu=GpuSpec(memory_bytes=4 << 30), quantizations=("auto",),
                                     max_num_seqs=4))
    candidates = candidate_layouts(plan.fitting(), 1, 3)
    assert [lp.name for lp in candidates] == ["tp1dp1"]
    launcher = TenkServeLauncher(model=tiny_moe_dir, max_num_seqs=4, device="cpu", log_dir=tmp_path / "logs",
                                 extra_args=("--load-format", "dummy"), startup_timeout=120)
    events = []
    result = autotune(candidates, launcher, _cfg([0], concurrency=(2,), output_len=4, num_prompts=8),
                      on_event=lambda kind, trial: events.append(kind))
    (trial,) = result.trials
    logs = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert trial.ok, f"{trial.error}\n{logs[-3000:]}"
    assert result.best is trial and trial.peak_tok_s > 0 and trial.failed_requests == 0
    assert events == ["start", "done"]
    cmd = serve_command(tiny_moe_dir, trial.layout, 0.9, 4)
    assert cmd.startswith("CUDA_VISIBLE_DEVICES=0 ") and f"tenk serve {tiny_moe_dir} --tp 1 --dp 1" in cmd


@pytest.mark.slow
def test_cli_autotunes_a_preset_in_two_formats_with_random_weights(tmp_path):
    """`tenk plan PRESET --autotune --quantization nvfp4,bf16 --serve-arg=--load-format --serve-arg=dummy`:
    each layout's server makes random weights in that layout's format; the best one's command says so."""
    import json

    from typer.testing import CliRunner

    from tenk.cli.main import app

    res = CliRunner().invoke(app, [
        "plan", "tiny-moe", "--gpus", "1", "--gpu-memory", "2GiB", "--quantization", "nvfp4,bf16", "--max-num-seqs", "4",
        "--autotune", "--autotune-concurrency", "2", "--autotune-input-len", "8", "--autotune-output-len", "4",
        "--autotune-num-prompts", "4", "--autotune-dir", str(tmp_path), "--device", "cpu",
        "--serve-arg=--load-format", "--serve-arg=dummy"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "autotune.json").read_text())
    assert sorted(t["quantization"] for t in data["trials"]) == ["bf16", "nvfp4"]
    assert all(t["error"] is None and t["failed_requests"] == 0 and t["measured_peak_tok_s"] > 0 for t in data["trials"])
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").glob("*.log")}
    nvfp4_log = next(text for name, text in logs.items() if name.startswith("nvfp4"))
    assert "weights (nvfp4" in nvfp4_log  # that server really made NVFP4 weights
    best_q = data["best"]["quantization"]
    assert f"--quantization {'none' if best_q == 'bf16' else best_q}" in data["serve_command"]
    assert "--load-format dummy" in data["serve_command"]


def test_autotune_refuses_a_preset_without_random_weights(tmp_path):
    from typer.testing import CliRunner

    from tenk.cli.main import app

    res = CliRunner().invoke(app, ["plan", "tiny-moe", "--gpus", "1", "--gpu-memory", "2GiB", "--autotune",
                                   "--device", "cpu", "--autotune-dir", str(tmp_path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "random weights (--serve-arg=--load-format --serve-arg=dummy)" in res.output
