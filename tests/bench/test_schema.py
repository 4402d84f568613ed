"""The JSON result has the documented, versioned fields, and the CSV matches it."""

import csv
import json

import pytest

from tenk.bench import BenchConfig, run_sweep
from tenk.bench.output import CSV_COLUMNS, csv_value


def test_json_schema_and_csv_agree(fake_server, tmp_path):
    url, _ = fake_server(chunk_delay=0.0005)
    out = tmp_path / "res.json"
    cfg = BenchConfig(urls=[url], concurrency=(2, 8), input_len="10:20", output_len=24, warmup=2, workers=1,
                      slo="ttft=0.5,tpot=0.05", out=str(out), save_requests=True, scrape_interval=0.05)
    run_sweep(cfg)
    doc = json.loads(out.read_text())
    assert doc["schema"] == "tenk.bench/1"
    assert doc["config"]["concurrency"] == [2, 8] and doc["config"]["model"] == "fake-model"
    env = doc["environment"]
    for key in ("host", "python", "tenk_version", "cpu_count", "workers"):
        assert env[key] is not None
    assert doc["servers"][0]["version"] == "tenk-fake-server"
    assert doc["warmup"] == {"requests": 2, "ok": 2} and doc["interrupted"] is False
    for lv in doc["levels"]:
        for key in ("concurrency", "num_prompts", "completed", "failed", "duration_s", "output_throughput",
                    "total_throughput", "request_throughput", "steady", "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms",
                    "goodput", "token_check", "input_check", "server_metrics", "errors", "requests"):
            assert key in lv, key
        for stat in ("mean", "p50", "p90", "p99"):
            assert lv["ttft_ms"][stat] is not None
        assert lv["goodput"]["good_requests"] <= lv["completed"]
        assert lv["input_check"] == {"checked": lv["completed"], "mismatched": 0}
        assert len(lv["requests"]) == lv["num_prompts"]
        assert 10 <= min(r["input_len"] for r in lv["requests"]) <= max(r["input_len"] for r in lv["requests"]) <= 20
        kv = lv["server_metrics"][url]
        assert kv["num_requests_running"]["samples"] >= 1 and "kv_cache_usage_perc" in kv
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert len(rows) == len(doc["levels"])
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    for row, lv in zip(rows, doc["levels"]):
        for col in CSV_COLUMNS:
            v = csv_value(lv, col)
            if v is None:
                assert row[col] == ""
            elif isinstance(v, bool):
                assert row[col] == str(v)
            else:
                assert float(row[col]) == pytest.approx(float(v), rel=1e-12)
