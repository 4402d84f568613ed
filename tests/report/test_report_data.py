"""The report draws the bench's numbers: report.json (the charts' data source) read back and
compared with the result files it was made from; every output file exists and is well formed."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from tenk.report import load_configurations
from tenk.report.charts import CHART_NAMES
from tenk.report.data import build_report_data


def _data(paths, labels=None) -> dict:
    return build_report_data(load_configurations(paths, labels))


def _closed_loop(doc: dict) -> list[dict]:
    return sorted((lv for lv in doc["levels"] if lv["concurrency"] is not None), key=lambda lv: lv["concurrency"])


def test_charts_hold_the_bench_numbers(report, bench_results):
    data = json.loads(report.data.read_text())
    docs = [json.loads(p.read_text()) for p in bench_results]
    charts = data["charts"]
    assert set(charts) == set(CHART_NAMES)  # the second result has a layout, so all four are drawn

    peaks = [max(lv["output_throughput"] for lv in d["levels"]) for d in docs]
    bars = charts["peak_throughput"]["bars"]
    assert [b["name"] for b in bars] == ["BF16 DP=1", "NVFP4 DP=1"]
    assert [b["value"] for b in bars] == peaks
    assert bars[0]["baseline"] and bars[0]["vs_baseline"] == pytest.approx(1.0)
    assert bars[1]["vs_baseline"] == pytest.approx(peaks[1] / peaks[0], rel=1e-12)
    assert bars[1]["vs_baseline"] > 1.3  # the fake server with half the step time really was faster

    for series, lat, doc in zip(charts["throughput_vs_concurrency"]["series"], charts["latency"]["series"], docs):
        levels = _closed_loop(doc)
        assert series["x"] == [1, 4, 8] == lat["x"]
        assert series["y"] == [lv["output_throughput"] for lv in levels]
        assert series["peak"]["y"] == max(series["y"])
        for key in ("ttft", "tpot"):
            for pct in ("p50", "p99"):
                assert lat[f"{key}_{pct}"] == [lv[f"{key}_ms"][pct] for lv in levels]

    (mem,) = charts["memory_layout"]["bars"]
    layout = docs[1]["config"]["layout"]
    assert mem["name"] == "NVFP4 DP=1"
    assert mem["bytes"]["weights"] == layout["weights_bytes_per_gpu"]
    assert mem["bytes"]["kv_cache"] == layout["kv_bytes_per_gpu"]
    assert mem["bytes"]["free"] == (80 - 17 - 50 - 5) << 30
    assert charts["memory_layout"]["unit"] == "GiB"
    assert mem["values"] == {"weights": 17.0, "kv_cache": 50.0, "reserve": 5.0, "free": 8.0}


def test_output_files_are_well_formed(report):
    files = report
    for name in CHART_NAMES:
        png, svg = files.charts[name]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
        assert "tok" in svg.read_text() or name in ("memory_layout", "latency")  # text kept as text
    html = files.html.read_text()
    # self-contained: every image is inline and nothing refers to another file or the network
    srcs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert srcs and all(s.startswith("data:") for s in srcs), srcs
    assert html.count("data:image/png;base64,") == len(CHART_NAMES)
    assert "<script" not in html
    md = files.markdown.read_text()
    for name in CHART_NAMES:
        assert f"(charts/{name}.png)" in md
    assert "| BF16 DP=1 |" in md and "| baseline |" in md


def test_titles_name_model_quantization_layout_and_gpu(bench_results):
    assert _data(bench_results[1:])["title"] == "fake-model NVFP4 DP=1 on fake GPU"
    data = _data(bench_results, labels=["gpu=H100 80GB"])
    assert data["title"] == "fake-model DP=1 on H100 80GB"  # only what both configurations share
    assert [c["caption"] for c in data["configurations"]] == ["BF16 DP=1\nH100 80GB", "NVFP4 DP=1\n1x H100 80GB"]
    data = _data(bench_results, labels=["2:layout=TP=1 DP=2", "1:model=m1"])
    assert data["title"] == "tenk benchmark"  # nothing shared (but the charts' legends still name each)


def test_memory_chart_is_skipped_without_layouts(results_copy):
    from tenk.report.markdown import render_markdown

    doc = json.loads(results_copy[1].read_text())
    del doc["config"]["layout"]
    results_copy[1].write_text(json.dumps(doc))
    data = _data(results_copy)
    assert "memory_layout" not in data["charts"] and all(c["memory"] is None for c in data["configurations"])
    files = {n: [f"{n}.png"] for n in data["charts"]}  # draw_all draws exactly the charts present in data
    assert "Memory layout" not in render_markdown(data, files)


def test_seed_numbers_give_the_seed_ratios(seed_results):
    """The seed README's four configurations: ratios vs FP8 TP=4 as the seed computed them from
    its own peaks (it took 2,096 at c=128 as FP8's peak; its table's real maximum is 2,126 at c=64)."""
    data = _data(seed_results)
    vs = {b["name"]: b["vs_baseline"] for b in data["charts"]["peak_throughput"]["bars"]}
    assert vs["NVFP4 TP=2 DP=3"] == pytest.approx(11401 / 2126)
    assert vs["NVFP4 TP=2 DP=2"] == pytest.approx(3995 / 2126)
    assert data["title"] == "MiniMax-M2.7 on RTX PRO 6000"
    assert len(data["charts"]["memory_layout"]["bars"]) == 4
