"""Results on disk and on screen: the versioned JSON (SCHEMA.md), one CSV row per level, and the
seed-style summary (`c=  1:    116 tok/s ... <- peak`)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

SCHEMA = "tenk.bench/1"

# CSV columns: dotted paths into a level's JSON object, in this order
CSV_COLUMNS = (
    "concurrency", "request_rate", "num_prompts", "completed", "failed", "unfinished",
    "duration_s", "input_tokens", "output_tokens", "output_throughput", "total_throughput",
    "request_throughput", "steady.output_throughput", "steady.total_throughput", "steady.duration_s",
    "ttft_ms.mean", "ttft_ms.p50", "ttft_ms.p90", "ttft_ms.p99",
    "tpot_ms.mean", "tpot_ms.p50", "tpot_ms.p90", "tpot_ms.p99",
    "itl_ms.mean", "itl_ms.p50", "itl_ms.p90", "itl_ms.p99",
    "e2e_ms.mean", "e2e_ms.p50", "e2e_ms.p90", "e2e_ms.p99",
    "goodput.request_goodput", "goodput.attainment", "token_check.mismatch",
    "server.kv_cache_usage_perc.mean", "server.kv_cache_usage_perc.max",
    "server.num_requests_running.mean", "server.num_requests_running.max",
    "server.num_requests_waiting.mean", "server.num_requests_waiting.max",
    "interrupted", "timed_out",
)


def _server_total(level: dict, name: str, stat: str):
    """A server metric over all URLs: KV usage averaged, request counts summed."""
    vals = [m[name][stat] for m in (level.get("server_metrics") or {}).values() if name in m]
    if not vals:
        return None
    return sum(vals) / len(vals) if name == "kv_cache_usage_perc" else sum(vals)


def csv_value(level: dict, column: str):
    parts = column.split(".")
    if parts[0] == "server":
        return _server_total(level, parts[1], parts[2])
    v = level
    for p in parts:
        if not isinstance(v, dict):
            return None
        v = v.get(p)
    return v


def csv_path_for(json_path: str | os.PathLike) -> Path:
    p = Path(json_path)
    return p.with_suffix(".csv") if p.suffix == ".json" else p.with_name(p.name + ".csv")


def write_results(doc: dict, json_path: str | os.PathLike) -> tuple[Path, Path]:
    """Writes JSON and CSV atomically (temp file + rename), so an interrupt mid-write never
    leaves a half file behind."""
    jp = Path(json_path)
    jp.parent.mkdir(parents=True, exist_ok=True)
    tmp = jp.with_name(jp.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_default) + "\n")
    os.replace(tmp, jp)
    cp = csv_path_for(jp)
    tmp = cp.with_name(cp.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for level in doc["levels"]:
            w.writerow(["" if (v := csv_value(level, c)) is None else v for c in CSV_COLUMNS])
    os.replace(tmp, cp)
    return jp, cp


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def level_label(level: dict) -> str:
    if level.get("request_rate") is not None:
        return f"rate={level['request_rate']:g}/s"
    return f"c={level['concurrency']:>3}"


def summary_lines(levels: list[dict], key: str = "output_throughput") -> list[str]:
    """The seed's summary: one line per level, `<- peak` on the best."""
    if not levels:
        return []
    values = [lv.get(key) or 0.0 for lv in levels]
    peak = max(range(len(values)), key=values.__getitem__)
    width = max(len(f"{v:,.0f}") for v in values)
    lines = []
    for i, (lv, v) in enumerate(zip(levels, values)):
        line = f"{level_label(lv)}: {v:>{width},.0f} tok/s"
        notes = []
        if lv.get("failed"):
            notes.append(f"{lv['failed']} failed")
        if lv.get("interrupted") or lv.get("timed_out"):
            notes.append("partial")
        if i == peak and len(levels) > 1:
            notes.append("<- peak")
        lines.append(line + ("  " + ", ".join(notes) if notes else ""))
    return lines
