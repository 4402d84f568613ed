"""The seed-style listing and the TL;DR rows, character for character."""

from __future__ import annotations

from tenk.report import load_configurations
from tenk.report.data import build_report_data
from tenk.report.tables import detail_rows, seed_listing, tldr_rows


def test_seed_listing_matches_the_seed_readme_layout(seed_results):
    data = build_report_data(load_configurations(seed_results))
    by_name = {c["name"]: c for c in data["configurations"]}
    # the seed README's "NVFP4 TP=2 DP=3" block, with tenk's peak note
    assert seed_listing(by_name["NVFP4 TP=2 DP=3"]) == "\n".join([
        "c=  1:     84 tok/s    c=128:  3,963 tok/s",
        "c=  4:    283 tok/s    c=256:  6,305 tok/s",
        "c=  8:    485 tok/s    c=384:  7,859 tok/s",
        "c= 16:    799 tok/s    c=512:  9,020 tok/s",
        "c= 32:  1,312 tok/s    c=640: 10,217 tok/s",
        "c= 64:  2,406 tok/s    c=896: 11,401 tok/s  <- peak (5.36x)",
    ])  # fmt: skip
    # the baseline's peak: c=64, the real maximum of the seed's FP8 row (its README marked c=128)
    assert seed_listing(by_name["FP8 TP=4"]) == "\n".join([
        "c=  1:    116 tok/s    c= 32:  1,406 tok/s",
        "c=  4:    328 tok/s    c= 64:  2,126 tok/s  <- peak",
        "c=  8:    536 tok/s    c=128:  2,096 tok/s",
        "c= 16:    850 tok/s",
    ])  # fmt: skip
    # a peak in the left column widens it, so the right column stays aligned
    row = dict(by_name["FP8 TP=4"], peak=dict(by_name["FP8 TP=4"]["peak"], concurrency=4))
    lines = seed_listing(row).splitlines()
    assert lines[1] == "c=  4:    328 tok/s  <- peak    c= 64:  2,126 tok/s"
    assert len({line.index("c=", 8) for line in lines[:3]}) == 1


def test_tldr_rows(seed_results):
    data = build_report_data(load_configurations(seed_results, ["1:gpus=4"]), baseline=0)
    assert tldr_rows(data) == [
        ("FP8 TP=4", "4x RTX PRO 6000", "2,126 tok/s", "baseline"),
        ("NVFP4 TP=4", "4x RTX PRO 6000", "2,496 tok/s", "1.17x"),
        ("NVFP4 TP=2 DP=2", "4x RTX PRO 6000", "3,995 tok/s", "1.88x"),
        ("NVFP4 TP=2 DP=3", "6x RTX PRO 6000", "11,401 tok/s", "5.36x"),
    ]


def test_failed_and_small_levels_are_marked(bench_results):
    import json

    doc = json.loads(bench_results[0].read_text())
    data = build_report_data(load_configurations(bench_results[:1]))
    row = data["configurations"][0]
    row["levels"][0]["failed"] = 3
    text = seed_listing(row)
    assert "3 failed" in text.splitlines()[0]
    assert text.count("<- peak") == 1
    # a CPU run's small throughputs keep a decimal; one above 100 makes the whole table whole numbers
    for lv, v in zip(row["levels"], (12.34, 56.78, 7.0)):
        lv["output_throughput"] = v
    assert [r[1] for r in detail_rows(row)] == ["12.3", "56.8", "7.0"]
    row["levels"][2]["output_throughput"] = 150.4
    assert [r[1] for r in detail_rows(row)] == ["12", "57", "150"]
    assert detail_rows(row)[0][0] == "1" and doc["levels"][0]["concurrency"] == 1
