import json
import subprocess
import sys

import pytest

from tenk.bench.selftest import SelfTestConfig, run_self_test


@pytest.mark.parametrize("workers", [1, 2])
def test_self_test_reports_a_ceiling(workers, tmp_path):
    st = SelfTestConfig(workers=workers, concurrency=(8, 32), output_len=64, out=str(tmp_path / "s.json"))
    result, stats = run_self_test(st)
    peak = result.peak()
    assert peak is not None and peak.output_throughput > 1000  # tok/s; 2-core CI reaches tens of thousands
    for lv in result.levels:
        n = max(4 * lv.concurrency, 64)
        assert lv.completed == n and lv.failed == 0 and lv.unfinished == 0
        assert lv.output_tokens == n * 64
        assert lv.token_check["mismatch"] == 0.0
        assert lv.ttft_ms.n == n and lv.ttft_ms.p50 > 0
    # every request the server answered (warm-up included) was seen by the client
    assert stats["completed"] == sum(lv.completed for lv in result.levels) + result.warmup["ok"]


def test_cli_self_test(tmp_path):
    out = tmp_path / "cli.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tenk.cli.main", "bench", "--self-test", "-c", "4,16", "--output-len", "32",
         "--workers", "1", "-q", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "c=  4:" in proc.stdout and "c= 16:" in proc.stdout and "<- peak" in proc.stdout
    assert "client ceiling:" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["schema"] == "tenk.bench/1" and len(doc["levels"]) == 2
    assert out.with_suffix(".csv").exists()
