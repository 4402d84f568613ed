"""report.md: the TL;DR table, the charts (PNG files beside it), and per configuration the
seed-style listing plus a latency table."""

from __future__ import annotations

from tenk.report import tables
from tenk.report.sections import CHART_SECTIONS, footer_lines


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], align_right_from: int = 1) -> list[str]:
    seps = ["---" if i < align_right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(seps) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(data: dict, chart_files: dict[str, list[str]], chart_dir: str = "charts") -> str:
    out = [f"# {data['title']}", "", "## TL;DR", ""]
    out += _table(tables.TLDR_HEADER, tables.tldr_rows(data), align_right_from=2)
    for note in data.get("notes") or ():
        out += ["", f"> {note}"]
    for name, heading, blurb in CHART_SECTIONS:
        files = chart_files.get(name)
        if not files:
            continue
        png = next(f for f in files if f.endswith(".png"))
        svg = next((f for f in files if f.endswith(".svg")), None)
        out += ["", f"## {heading}", "", blurb, "", f"![{heading}]({chart_dir}/{png})"]
        if svg:
            out += ["", f"Vector version: [{svg}]({chart_dir}/{svg})"]
    out += ["", "## Detailed results"]
    for row in data["configurations"]:
        out += ["", f"### {tables.heading(row)}", "", "```text", tables.seed_listing(row), "```", ""]
        out += _table(tables.DETAIL_HEADER, tables.detail_rows(row))
        for w in row["warnings"]:
            out += ["", f"> warning: {w}"]
    out += ["", "---", ""] + [f"{line}  " for line in footer_lines(data)]
    return "\n".join(out).rstrip() + "\n"
