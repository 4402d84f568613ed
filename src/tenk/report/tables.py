"""The report's tables, as rows of text shared by the Markdown and HTML writers:
- the TL;DR (configuration, GPUs, peak throughput, vs baseline),
- the seed's per-concurrency listing, two columns, `<- peak` on the best level:

      c=  1:    116 tok/s    c= 32:  1,406 tok/s
      c=  4:    328 tok/s    c= 64:  2,126 tok/s
      c=  8:    536 tok/s    c=128:  2,096 tok/s  <- peak
      c= 16:    850 tok/s

- a detail table per configuration with the latency percentiles.
"""

from __future__ import annotations

from tenk.report.charts import fmt_tps, fmt_x

TLDR_HEADER = ("Configuration", "GPUs", "Peak throughput", "vs baseline")
DETAIL_HEADER = ("Concurrency", "Output tok/s", "TTFT p50 (ms)", "TTFT p99 (ms)", "TPOT p50 (ms)",
                 "TPOT p99 (ms)", "Completed", "Failed")  # fmt: skip


def _gpus_cell(row: dict) -> str:
    if row["gpus"] and row["gpu"]:
        return f"{row['gpus']}x {row['gpu']}"
    if row["gpus"]:
        return str(row["gpus"])
    return row["gpu"] or "-"


def tldr_rows(data: dict) -> list[tuple[str, ...]]:
    rows = []
    for r in data["configurations"]:
        pk = r["peak"]
        peak = f"{fmt_tps(pk['output_throughput'])} tok/s" if pk else "no successful level"
        vs = "baseline" if r["baseline"] else (fmt_x(pk["vs_baseline"]) if pk else "n/a")
        rows.append((r["name"], _gpus_cell(r), peak, vs))
    return rows


def _level_key(lv: dict) -> str:
    if lv["concurrency"] is None:
        return f"rate={lv['request_rate']:g}/s"
    return f"c={lv['concurrency']:>3}"


def seed_listing(row: dict) -> str:
    """The seed README's two-column per-concurrency block for one configuration."""
    levels = row["levels"]
    if not levels:
        return ""
    pk = row["peak"]
    scale = max(lv["output_throughput"] for lv in levels)
    cells = []
    for lv in levels:
        cell = f"{_level_key(lv)}: {fmt_tps(lv['output_throughput'], scale):>6} tok/s"
        notes = []
        if lv["failed"]:
            notes.append(f"{lv['failed']} failed")
        if lv["partial"]:
            notes.append("partial")
        is_peak = (pk is not None and lv["completed"] > 0 and lv["concurrency"] == pk["concurrency"]
                   and lv["request_rate"] == pk["request_rate"] and len(levels) > 1)  # fmt: skip
        if is_peak:
            rel = "" if row["baseline"] or pk["vs_baseline"] is None else f" ({fmt_x(pk['vs_baseline'])})"
            notes.append(f"<- peak{rel}")
        cells.append(cell + ("  " + ", ".join(notes) if notes else ""))
    if len(cells) <= 4:
        return "\n".join(cells)
    half = (len(cells) + 1) // 2
    left, right = cells[:half], cells[half:]
    width = max(len(c) for c in left)
    return "\n".join(
        (f"{lc:<{width}}    {right[i]}" if i < len(right) else lc).rstrip() for i, lc in enumerate(left)
    )


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def detail_rows(row: dict) -> list[tuple[str, ...]]:
    out = []
    scale = max((lv["output_throughput"] for lv in row["levels"]), default=0.0)
    for lv in row["levels"]:
        key = str(lv["concurrency"]) if lv["concurrency"] is not None else f"rate {lv['request_rate']:g}/s"
        out.append((
            key, fmt_tps(lv["output_throughput"], scale), _ms(lv["ttft_ms"]["p50"]), _ms(lv["ttft_ms"]["p99"]),
            _ms(lv["tpot_ms"]["p50"]), _ms(lv["tpot_ms"]["p99"]), str(lv["completed"]), str(lv["failed"]),
        ))  # fmt: skip
    return out


def heading(row: dict) -> str:
    """'NVFP4 TP=2 DP=2 (4x H100, Qwen3-30B-A3B) — 1.91x the baseline'."""
    bits = [b for b in (_gpus_cell(row) if (row["gpus"] or row["gpu"]) else None, row["model"]) if b]
    head = row["name"] + (f" ({', '.join(bits)})" if bits else "")
    pk = row["peak"]
    if row["baseline"]:
        return head + " — baseline"
    if pk and pk["vs_baseline"] is not None:
        return head + f" — {fmt_x(pk['vs_baseline'])} the baseline"
    return head
