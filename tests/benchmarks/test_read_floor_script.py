"""benchmarks/read_floor.py (the floor under issue 7's decode bandwidth targets) on CPU: its smoke
run end to end, and the check that keeps a read launch which skips bytes from setting a floor."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.benchmarks.test_serving_scripts import BENCH, _run

sys.path.insert(0, str(BENCH))
import read_floor as rf  # noqa: E402
from moe_kernels import SMOKE_SHAPES, Timer, bytes_to_read, make_routing  # noqa: E402


@pytest.mark.slow
def test_smoke_run_writes_floors_beside_the_moe(tmp_path):
    _run([str(BENCH / "read_floor.py"), "--smoke", "--models", "qwen3", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "read_floor_smoke.json").read_text())
    assert not result["errors"] and result["checks"] and all(c["reads_every_word"] for c in result["checks"])
    rows = result["rows"]
    assert [r["tokens"] for r in rows] == [1, 16]
    shape = SMOKE_SHAPES["qwen3"]
    for r in rows:
        # the two passes split exactly the bytes moe_kernels.py charges the MoE with (to the byte
        # or two that splitting the per-expert globals 2:1 rounds off)
        ids = make_routing(shape, r["tokens"], "cpu", seed=r["tokens"])[2]
        assert abs(r["bytes_w13"] + r["bytes_w2"] - sum(bytes_to_read(shape, ids, r["tokens"], nvfp4=True))) <= 2
        assert r["bytes_w13"] > r["bytes_w2"] > 0
        for key in ("two_launches_iso_ms", "two_launches_chain_ms", "one_launch_iso_ms", "one_launch_chain_ms",
                    "moe_ms", "moe_layer_ms"):
            assert r[key] > 0, key
        assert r["target_reachable_iso"] == (max(r["two_launches_iso_tbps"], r["one_launch_iso_tbps"])
                                             >= r["target_tbps"])


def test_a_launch_that_skips_words_sets_no_floor(monkeypatch):
    """Each launch config is checked to read every word (the xor of its programs' xors is the
    buffer's) before it is timed: one that reads half the buffer is refused."""
    from tenk.kernels.interpret import triton_interpreter

    checks: list[dict] = []
    with triton_interpreter():
        cfg, ms = rf.best_config(4 * 5000, Timer(True), torch.device("cpu"), {}, checks)
        assert ms > 0 and checks and all(c["reads_every_word"] for c in checks)
        whole = rf.read_launch
        monkeypatch.setattr(rf, "read_launch", lambda buf, out, c, pdl=None: whole(buf[: buf.numel() // 2], out, c, pdl))
        with pytest.raises(RuntimeError, match="no read launch read all"):
            rf.best_config(4 * 6000, Timer(True), torch.device("cpu"), {}, checks)
    assert not checks[-1]["reads_every_word"]
