"""benchmarks/merge_bench.py: one configuration's levels from several server starts become one
tenk.bench/1 file that tenk report reads, later levels replacing earlier ones."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tenk.report.inputs import load_configurations

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "benchmarks" / "results" / "parallel_h200x2_run2_dp1.json"  # a real sweep


def _split(tmp_path):
    doc = json.loads(SOURCE.read_text())
    first, second = copy.deepcopy(doc), copy.deepcopy(doc)
    first["levels"], second["levels"] = doc["levels"][:5], doc["levels"][4:]  # level 5 in both
    second["levels"][0] = {**second["levels"][0], "output_throughput": 1.0}
    del second["config"]["labels"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    return doc, a, b


def _merge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "merge_bench.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_merged_levels_are_the_sweep_with_later_levels_winning(tmp_path):
    doc, a, b = _split(tmp_path)
    out = tmp_path / "m.json"
    proc = _merge(a, b, "--label", "gpu=H200", "--out", out)
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(out.read_text())
    want = copy.deepcopy(doc["levels"])
    want[4]["output_throughput"] = 1.0  # from the second file
    assert merged["levels"] == want
    assert merged["config"]["concurrency"] == [lv["concurrency"] for lv in doc["levels"]]
    assert [s["file"] for s in merged["config"]["merged_from"]] == ["a.json", "b.json"]
    assert merged["config"]["labels"]["gpu"] == "H200" and merged["config"]["labels"]["name"] == "dp1"
    (cfg,) = load_configurations([out])
    assert [lv.concurrency for lv in cfg.levels] == merged["config"]["concurrency"]
    assert cfg.gpu == "H200" and cfg.memory is not None


def test_different_models_are_refused(tmp_path):
    _, a, b = _split(tmp_path)
    other = json.loads(b.read_text())
    other["config"]["model"] = "minimax-m2"
    b.write_text(json.dumps(other))
    proc = _merge(a, b, "--out", tmp_path / "m.json")
    assert proc.returncode == 2 and "different models" in proc.stderr
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("case", ["label", "missing", "not-json"])
def test_bad_arguments_get_a_sentence(tmp_path, case):
    _, a, _ = _split(tmp_path)
    (tmp_path / "junk.json").write_text("{not json")
    args = {"label": [a, "--label", "gpu"], "missing": [tmp_path / "missing.json"], "not-json": [tmp_path / "junk.json"]}
    proc = _merge(*args[case], "--out", tmp_path / "m.json")
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr
