"""benchmarks/table_ab.py's CPU side: which buckets it compares, the rule a new entry wins by,
and the merged table it writes (the timing itself needs a GPU)."""

from __future__ import annotations

import json
import sys

from tests.benchmarks.test_serving_scripts import BENCH

sys.path.insert(0, str(BENCH))
import table_ab  # noqa: E402
from tenk.kernels.configs import nvfp4 as cfgs  # noqa: E402

SHIPPED = json.loads(cfgs.table_path("h100").read_text())


def test_models_and_tp_shards_map_to_the_tables_keys():
    for spec, key in [("qwen3", "e128_h2048_i768_top8"), ("qwen3@2", "e128_h2048_i384_top8"),
                      ("minimax@2", "e256_h3072_i768_top8")]:
        s = table_ab.shape_of(spec)
        assert cfgs.moe_key(s.experts, s.hidden, s.inter, s.top_k) == key and key in SHIPPED["moe"]


def test_a_new_entry_wins_only_on_both_ratios_and_the_mean():
    assert table_ab.wins(1.029, 1.033)
    assert not table_ab.wins(0.941, 1.058)  # faster in chains, slower alone: kept
    assert not table_ab.wins(1.005, 1.002)  # both >= 1, but within the noise
    assert table_ab.wins(1.0, 1.02)


def test_merge_takes_winning_buckets_only():
    key = "e128_h2048_i768_top8"
    new = json.loads(json.dumps(SHIPPED))
    for b in ("256", "512"):
        new["moe"][key][b] = {**new["moe"][key][b], "block_m": 128, "ms": 9.0}
    assert table_ab.entries(SHIPPED, new, key, 300) == (SHIPPED["moe"][key]["256"], new["moe"][key]["256"])
    rows = [{"key": key, "tokens": 256, "iso_ratio": 1.03, "chain_ratio": 1.04, "iso_ms": {"new": [0.2, 0.1654321]}},
            {"key": key, "tokens": 512, "iso_ratio": 0.99, "chain_ratio": 1.2, "iso_ms": {"new": [0.1]}}]
    out = table_ab.merged(SHIPPED, new, rows)
    assert out["moe"][key]["256"] == {**new["moe"][key]["256"], "ms": 0.16543}
    assert out["moe"][key]["512"] == SHIPPED["moe"][key]["512"]
    out["moe"][key]["256"] = SHIPPED["moe"][key]["256"]
    assert out == SHIPPED  # nothing else moved
