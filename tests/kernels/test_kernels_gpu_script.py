"""benchmarks/kernels_gpu.py runs end to end (--smoke: CPU, Triton interpreter, tiny shapes), so the
lead's one GPU run of it does not fail on plumbing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels_gpu.py"


@pytest.mark.slow
def test_smoke_run(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "kernels_smoke.json").read_text())
    assert not result["errors"]
    names = {c["name"] for c in result["checks"]}
    assert any(n.startswith("attention mixed") for n in names) and any("fused_moe triton" in n for n in names)
    assert all(c["ok"] for c in result["checks"])
    assert len(result["timings"]) > 20
