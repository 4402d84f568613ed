"""The report's data source: one dict (written as report.json) holding every number the charts
and tables show. Charts draw only from its `charts` section, so a reader (or a test) can check
a chart against the bench results without reading pixels.

    {"schema": "tenk.report/1", "title", "baseline", "configurations": [...],
     "charts": {"peak_throughput" | "throughput_vs_concurrency" | "latency" | "memory_layout": {...}}}

FORMAT.md describes each field.
"""

from __future__ import annotations

from tenk.report.inputs import Configuration, Level

SCHEMA = "tenk.report/1"
GIB = float(1 << 30)
MIB = float(1 << 20)
# One color per configuration, the same in every chart (matplotlib's tab10, colour-blind friendlier
# than its defaults would be for bars next to lines).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def peak_level(levels: list[Level]) -> Level | None:
    ok = [lv for lv in levels if lv.completed > 0]
    return max(ok, key=lambda lv: lv.output_throughput, default=None)


def gpus_text(c: Configuration) -> str | None:
    """'4x RTX PRO 6000', '4 GPUs', 'RTX PRO 6000' or None."""
    if c.gpus and c.gpu:
        return f"{c.gpus}x {c.gpu}"
    if c.gpus:
        return f"{c.gpus} GPU" + ("s" if c.gpus != 1 else "")
    return c.gpu


def _shared(values: list[str | None]) -> str | None:
    return values[0] if values and values[0] and all(v == values[0] for v in values) else None


def report_title(configs: list[Configuration]) -> str:
    """'Qwen3-30B-A3B on H100 80GB': what every configuration has in common."""
    model = _shared([c.model for c in configs])
    gpu = _shared([c.gpu for c in configs])
    quant = _shared([c.quantization for c in configs])
    layout = _shared([c.layout for c in configs])
    head = " ".join(x for x in (model, quant, layout) if x) or "tenk benchmark"
    return f"{head} on {gpu}" if gpu else head


def caption(c: Configuration) -> str:
    """A bar's label: the name, then the hardware when the name does not already say it."""
    hw = gpus_text(c)
    return f"{c.name}\n{hw}" if hw and hw not in c.name else c.name


def memory_bar(c: Configuration) -> dict | None:
    """Per-GPU memory split in bytes and in the GiB the chart draws. Free is what the GPU has
    beyond weights, KV cache and reserve; absent when the device size is unknown."""
    m = c.memory
    if not m:
        return None
    weights = m.get("weights_bytes_per_gpu") or 0
    kv = m.get("kv_bytes_per_gpu") or 0
    reserve = m.get("reserve_bytes_per_gpu") or 0
    total = m.get("gpu_memory_bytes")
    free = max(0, total - weights - kv - reserve) if total else None
    parts = {"weights": weights, "kv_cache": kv, "reserve": reserve, "free": free}
    return {
        "name": c.name, "caption": caption(c), "device": m.get("device", "cuda"),
        "gpu_memory_bytes": total, "kv_tokens": m.get("kv_tokens"), "bytes": parts,
    }


def build_report_data(configs: list[Configuration], baseline: int = 0, title: str | None = None,
                      notes: list[str] | None = None) -> dict:  # fmt: skip
    base_peak = peak_level(configs[baseline].levels)
    base_value = base_peak.output_throughput if base_peak else 0.0
    rows = []
    for i, c in enumerate(configs):
        pk = peak_level(c.levels)
        vs = (pk.output_throughput / base_value) if (pk and base_value > 0) else None
        rows.append({
            "name": c.name, "source": c.source, "model": c.model, "quantization": c.quantization,
            "layout": c.layout, "gpu": c.gpu, "gpus": c.gpus, "caption": caption(c),
            "color": PALETTE[i % len(PALETTE)], "baseline": i == baseline,
            "peak": {"concurrency": pk.concurrency, "request_rate": pk.request_rate,
                     "output_throughput": pk.output_throughput, "vs_baseline": vs} if pk else None,
            "levels": [lv.as_dict() for lv in c.levels],
            "memory": memory_bar(c),
            "warnings": list(c.warnings),
        })  # fmt: skip
    return {
        "schema": SCHEMA,
        "title": title or report_title(configs),
        "baseline": configs[baseline].name,
        "notes": list(notes or ()),  # sentences shown under the TL;DR (e.g. what `tenk demo` fell back to)
        "configurations": rows,
        "charts": _chart_data(rows),
    }


def _series(row: dict) -> list[dict]:
    # closed-loop levels only: a request-rate level has no concurrency to put on the x axis
    return sorted((lv for lv in row["levels"] if lv["concurrency"] is not None), key=lambda lv: lv["concurrency"])


def _chart_data(rows: list[dict]) -> dict:
    charts: dict = {}
    charts["peak_throughput"] = {
        "unit": "output tokens/s",
        "bars": [
            {"name": r["name"], "caption": r["caption"], "color": r["color"],
             "value": r["peak"]["output_throughput"] if r["peak"] else 0.0,
             "concurrency": r["peak"]["concurrency"] if r["peak"] else None,
             "vs_baseline": r["peak"]["vs_baseline"] if r["peak"] else None, "baseline": r["baseline"]}
            for r in rows
        ],
    }  # fmt: skip
    lines, lat = [], []
    for r in rows:
        lvls = _series(r)
        if not lvls:
            continue
        x = [lv["concurrency"] for lv in lvls]
        y = [lv["output_throughput"] for lv in lvls]
        best = max(range(len(y)), key=y.__getitem__)
        lines.append({"name": r["name"], "color": r["color"], "x": x, "y": y, "peak": {"x": x[best], "y": y[best]}})
        lat.append({
            "name": r["name"], "color": r["color"], "x": x,
            "ttft_p50": [lv["ttft_ms"]["p50"] for lv in lvls], "ttft_p99": [lv["ttft_ms"]["p99"] for lv in lvls],
            "tpot_p50": [lv["tpot_ms"]["p50"] for lv in lvls], "tpot_p99": [lv["tpot_ms"]["p99"] for lv in lvls],
        })  # fmt: skip
    if lines:
        charts["throughput_vs_concurrency"] = {"unit": "output tokens/s", "series": lines}
        charts["latency"] = {"unit": "ms", "series": lat}
    bars = [dict(r["memory"], color=r["color"]) for r in rows if r["memory"]]
    if bars:
        # GiB for real models; a tiny demo model's few MiB would all read 0.0 GiB
        biggest = max(sum(v for v in b["bytes"].values() if v) for b in bars)
        unit, scale = ("GiB", GIB) if biggest >= GIB else ("MiB", MIB)
        for b in bars:
            b["values"] = {k: (round(v / scale, 4) if v is not None else None) for k, v in b["bytes"].items()}
        charts["memory_layout"] = {"unit": unit, "bars": bars}
    return charts
