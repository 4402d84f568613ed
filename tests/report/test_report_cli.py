"""`tenk report` on the command line: labels and baseline options, and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tenk.cli.main import app


def _run(*args: str):
    return CliRunner().invoke(app, ["report", *args])


def test_cli_writes_the_report_with_labels_and_baseline(bench_results, tmp_path):
    out = tmp_path / "rep"
    r = _run(*map(str, bench_results), "--out", str(out), "--label", "gpu=H100 80GB",
             "--label", "1:name=BF16 TP=1", "--baseline", "NVFP4 DP=1")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "report.html" in r.output and "(baseline)" in r.output
    data = json.loads((out / "report.json").read_text())
    assert data["baseline"] == "NVFP4 DP=1"
    assert [c["name"] for c in data["configurations"]] == ["BF16 TP=1", "NVFP4 DP=1"]
    assert data["configurations"][0]["peak"]["vs_baseline"] < 1.0  # the slower one, against the faster
    assert {p.name for p in (out / "charts").iterdir()} >= {"peak_throughput.png", "peak_throughput.svg"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["/nonexistent/result.json"], "does not exist"),
        (["{first}", "--label", "colour=red"], "the key must be one of"),
        (["{first}", "--label", "3:gpu=H100"], "not a result number between 1 and 1"),
        (["{first}", "--label", "gpu"], "must look like KEY=VALUE"),
        (["{first}", "--baseline", "nope"], "names no configuration"),
        (["{first}", "--baseline", "2"], "not between 1 and 1"),
        (["{bad}"], "is not a tenk bench result"),
        (["{empty}"], "holds no measured levels"),
        (["{badlayout}"], "config.layout.kv_bytes_per_gpu must be a non-negative number"),
    ],
)
def test_user_errors_are_one_line(bench_results, tmp_path, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    doc = json.loads(bench_results[1].read_text())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(dict(doc, levels=[])))
    badlayout = tmp_path / "badlayout.json"
    doc["config"]["layout"]["kv_bytes_per_gpu"] = -5
    badlayout.write_text(json.dumps(doc))
    names = {"first": bench_results[0], "bad": bad, "empty": empty, "badlayout": badlayout}
    r = _run(*(a.format(**names) for a in args), "--out", str(tmp_path / "out"))
    assert r.exit_code == 1
    assert message in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output
