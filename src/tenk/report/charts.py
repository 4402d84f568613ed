"""The report's four charts, drawn with matplotlib's object API (no pyplot, no global backend
switch, so importing this never changes the caller's matplotlib state). Each function reads one
entry of report.json's `charts` section and nothing else, and writes PNG and SVG files.

- peak_throughput: a bar per configuration, labelled with its tok/s and "N.NNx" vs the baseline
- throughput_vs_concurrency: a line per configuration, its peak starred
- latency: TTFT and TPOT, p50 (solid) and p99 (dashed), vs concurrency
- memory_layout: a stacked bar per configuration: one GPU's weights, KV cache, reserve, free
"""

from __future__ import annotations

from pathlib import Path

CHART_NAMES = ("peak_throughput", "throughput_vs_concurrency", "latency", "memory_layout")
FORMATS = ("png", "svg")
PNG_DPI = 150
SEGMENTS = (  # memory chart: (key, legend, colour)
    ("weights", "Weights", "#3b6ea8"),
    ("kv_cache", "KV cache", "#59a14f"),
    ("reserve", "Reserve (activations, graphs, runtime)", "#f28e2b"),
    ("free", "Free", "#d9d9d9"),
)
_RC = {
    "font.size": 11, "axes.titlesize": 13, "axes.titleweight": "bold", "axes.labelsize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "legend.fontsize": 10, "legend.frameon": False,
    "svg.hashsalt": "tenk-report",  # stable ids, so the same data gives the same SVG
    "svg.fonttype": "none",  # text stays text in the SVG (searchable, smaller)
}  # fmt: skip
# a white box behind a peak label keeps it readable where another configuration's line crosses it
_LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}


def fmt_tps(v: float, scale: float | None = None) -> str:
    """Tokens/s: whole numbers, with one decimal when the value (or `scale`, the largest of a
    group printed together) is below 100, as on a CPU run of a tiny model."""
    return f"{v:,.0f}" if abs(v if scale is None else scale) >= 100 else f"{v:,.1f}"


def fmt_x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _title(head: str, title: str, width_in: float) -> str:
    """Chart heading over the report title, the title wrapped to the figure's width (about nine
    bold 13-point characters per inch) so a long one is never cut off."""
    import textwrap

    return head + "\n" + "\n".join(textwrap.wrap(title, max(20, int(width_in * 9))))


def _save(fig, out_dir: Path, name: str) -> list[str]:
    files = []
    for ext in FORMATS:
        path = out_dir / f"{name}.{ext}"
        kw = {"dpi": PNG_DPI} if ext == "png" else {"metadata": {"Date": None}}
        fig.savefig(path, format=ext, facecolor="white", **kw)
        files.append(path.name)
    return files


def _concurrency_axis(ax, xs: list[int]) -> None:
    import itertools
    import math

    ax.set_xscale("log", base=2)
    ticks = sorted(set(xs))
    ax.set_xticks(ticks)
    # the seed's upper levels (384, 512, 640, 896) sit closer than a label is wide on a log axis
    crowded = any(math.log2(b / a) < 0.6 for a, b in itertools.pairwise(ticks))
    ax.set_xticklabels([str(t) for t in ticks], rotation=45 if crowded else 0)
    ax.minorticks_off()
    ax.set_xlabel("Concurrency (requests in flight)")


def _thousands(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 10 or v == 0 else f"{v:g}"))


def peak_throughput(chart: dict, title: str, out_dir: Path) -> list[str]:
    from matplotlib.figure import Figure

    bars = chart["bars"]
    fig = Figure(figsize=(max(6.5, 2.1 * len(bars) + 2), 5.6), layout="constrained")
    ax = fig.add_subplot()
    x = list(range(len(bars)))
    values = [b["value"] for b in bars]
    ax.bar(x, values, color=[b["color"] for b in bars], width=0.6, zorder=2)
    top = max(values) if max(values, default=0) > 0 else 1.0
    for xi, b in zip(x, bars):
        rel = "baseline" if b["baseline"] else fmt_x(b["vs_baseline"])
        at = f" @ c={b['concurrency']}" if b["concurrency"] is not None else ""
        ax.text(xi, b["value"] + top * 0.015, f"{fmt_tps(b['value'])} tok/s{at}\n{rel}",
                ha="center", va="bottom", fontsize=10.5, fontweight="bold")  # fmt: skip
    ax.set_xticks(x)
    ax.set_xticklabels([b["caption"] for b in bars])
    ax.set_ylim(0, top * 1.22)  # room for the two-line labels above the tallest bar
    ax.set_ylabel("Peak output throughput (tokens/s)")
    _thousands(ax)
    ax.grid(axis="x", visible=False)
    ax.set_title(_title("Peak output throughput", title, fig.get_figwidth()))
    return _save(fig, out_dir, "peak_throughput")


def throughput_vs_concurrency(chart: dict, title: str, out_dir: Path) -> list[str]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.6), layout="constrained")
    ax = fig.add_subplot()
    xs: list[int] = []
    for s in chart["series"]:
        xs += s["x"]
        ax.plot(s["x"], s["y"], marker="o", color=s["color"], linewidth=2, label=s["name"], zorder=3)
        pk = s["peak"]
        ax.plot([pk["x"]], [pk["y"]], marker="*", markersize=17, color=s["color"], markeredgecolor="black", zorder=4)
        ax.annotate(f"peak {fmt_tps(pk['y'])}", (pk["x"], pk["y"]), textcoords="offset points", xytext=(0, 12),
                    ha="center", fontsize=9.5, color=s["color"], fontweight="bold", zorder=5,
                    bbox=_LABEL_BOX)  # fmt: skip
    _concurrency_axis(ax, xs)
    ax.set_ylim(0, max(max(s["y"]) for s in chart["series"]) * 1.15 or 1.0)
    ax.set_ylabel("Output throughput (tokens/s)")
    _thousands(ax)
    ax.legend(loc="upper left")
    ax.set_title(_title("Throughput vs concurrency (★ = peak)", title, fig.get_figwidth()))
    return _save(fig, out_dir, "throughput_vs_concurrency")


def _latency_panel(ax, series: list[dict], key: str, label: str, short: str) -> None:
    xs, vals = [], []
    for s in series:
        for pct, style, marker in (("p50", "-", "o"), ("p99", "--", "^")):
            pts = [(x, y) for x, y in zip(s["x"], s[f"{key}_{pct}"]) if y is not None]
            if not pts:
                continue
            px, py = zip(*pts)
            xs += px
            vals += py
            ax.plot(px, py, linestyle=style, marker=marker, color=s["color"], linewidth=1.8,
                    label=f"{s['name']} {pct}")  # fmt: skip
    if xs:
        _concurrency_axis(ax, xs)
    positive = [v for v in vals if v > 0]
    if positive and max(positive) / min(positive) > 30:  # spans orders of magnitude: log scale keeps p50 readable
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_ylabel(f"{short} (ms)")
    ax.set_title(f"{label} ({short})")


def latency(chart: dict, title: str, out_dir: Path) -> list[str]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    _latency_panel(ax1, chart["series"], "ttft", "Time to first token", "TTFT")
    _latency_panel(ax2, chart["series"], "tpot", "Time per output token", "TPOT")
    handles, labels = ax1.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)))
    head = "Latency vs concurrency (solid p50, dashed p99)"
    fig.suptitle(_title(head, title, fig.get_figwidth()), fontweight="bold")
    return _save(fig, out_dir, "latency")


def memory_layout(chart: dict, title: str, out_dir: Path) -> list[str]:
    from matplotlib.figure import Figure

    bars = chart["bars"]
    fig = Figure(figsize=(max(8.0, 2.1 * len(bars) + 4.5), 5.8), layout="constrained")
    ax = fig.add_subplot()
    x = list(range(len(bars)))
    unit = chart["unit"]
    totals = [sum(v for v in b["values"].values() if v) for b in bars]
    top = max(totals, default=0) or 1.0
    bottoms = [0.0] * len(bars)
    for key, legend, color in SEGMENTS:
        heights = [b["values"][key] or 0.0 for b in bars]
        if not any(heights):
            continue
        ax.bar(x, heights, bottom=bottoms, color=color, width=0.6, label=legend, edgecolor="white", zorder=2)
        for xi, h, b0 in zip(x, heights, bottoms):
            if h >= top * 0.05:  # a label only where it fits inside the segment
                ax.text(xi, b0 + h / 2, _amount(h, unit), ha="center", va="center", fontsize=9.5,
                        color="black" if key == "free" else "white", fontweight="bold")  # fmt: skip
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for xi, b, total in zip(x, bars, totals):
        kv = f"KV: {_tokens(b['kv_tokens'])} tokens/replica" if b.get("kv_tokens") else ""
        ax.text(xi, total + top * 0.015, kv, ha="center", va="bottom", fontsize=9.5)
    ax.set_xticks(x)
    ax.set_xticklabels([b["caption"] for b in bars])
    ax.set_xlim(-0.75, len(bars) - 0.25)  # a lone bar keeps its width instead of filling the axes
    ax.set_ylim(0, top * 1.12)
    gpu = all(b["device"] != "cpu" for b in bars)
    ax.set_ylabel(f"Memory ({unit} per GPU)" if gpu else f"Memory ({unit} per replica)")
    what = "one GPU" if gpu else "one replica (CPU: its share of RAM)"
    ax.grid(axis="x", visible=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(_title(f"Memory layout of {what}", title, fig.get_figwidth() * 0.7))  # the legend takes the rest
    return _save(fig, out_dir, "memory_layout")


def _amount(v: float, unit: str) -> str:
    return f"{v:.0f} {unit}" if v >= 10 else f"{v:.1f} {unit}" if v >= 0.1 else f"{v:.2f} {unit}"


def _tokens(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}K"
    return f"{n:,}"


_DRAW = {
    "peak_throughput": peak_throughput,
    "throughput_vs_concurrency": throughput_vs_concurrency,
    "latency": latency,
    "memory_layout": memory_layout,
}


def draw_all(data: dict, out_dir: Path) -> dict[str, list[str]]:
    """Draw every chart report.json has data for; returns {chart: [file names]} (in out_dir)."""
    import matplotlib

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    with matplotlib.rc_context(_RC):
        for name in CHART_NAMES:
            if name in data["charts"]:
                files[name] = _DRAW[name](data["charts"][name], data["title"], out_dir)
    return files
