"""Text shared by report.md and report.html: section headings, one sentence per chart saying
how to read it, and the footer naming the sources."""

from __future__ import annotations

from tenk.version import __version__

CHART_SECTIONS = (
    ("peak_throughput", "Peak throughput",
     ("The best output throughput each configuration reached over its concurrency sweep, and its ratio to the "
      "baseline.")),
    ("throughput_vs_concurrency", "Throughput scaling",
     "Output tokens per second at each concurrency level; the star marks each configuration's peak."),
    ("latency", "Latency",
     "Time to first token and time per output token at each concurrency level: p50 solid, p99 dashed."),
    ("memory_layout", "Memory layout",
     "How one GPU's memory is split between weights, KV cache, reserve (activations, CUDA graphs, runtime) and free."),
)  # fmt: skip


def footer_lines(data: dict) -> list[str]:
    lines = [(f"Baseline: {data['baseline']}. Throughput is output tokens per second counted by the server's "
              "usage, over the whole level (first request sent to last finished).")]  # fmt: skip
    for row in data["configurations"]:
        lines.append(f"{row['name']}: {row['source']}")
    lines.append(f"Made by tenk {__version__} (`tenk report`); every number drawn is in report.json.")
    return lines
