"""make_report: bench result files -> a report folder.

    OUT/report.md     Markdown, charts linked from charts/
    OUT/report.html   self-contained (charts embedded)
    OUT/report.json   every number the charts and tables show (schema tenk.report/1)
    OUT/charts/*.png, *.svg
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tenk.report.charts import draw_all
from tenk.report.data import build_report_data
from tenk.report.html import render_html
from tenk.report.inputs import Configuration, ReportInputError, load_configurations
from tenk.report.markdown import render_markdown

CHART_DIR = "charts"


@dataclass(slots=True)
class ReportFiles:
    out_dir: Path
    markdown: Path
    html: Path
    data: Path
    charts: dict[str, list[Path]]  # chart name -> [png, svg]


def resolve_baseline(configs: list[Configuration], baseline: str | int | None) -> int:
    """None: the first file; a number: the N-th file (1-based); text: a configuration name."""
    if baseline is None or baseline == "":
        return 0
    text = str(baseline).strip()
    if text.isdigit():
        i = int(text)
        if not 1 <= i <= len(configs):
            raise ReportInputError(f"--baseline {i} is not between 1 and {len(configs)} (the number of result files)")
        return i - 1
    for i, c in enumerate(configs):
        if c.name == text:
            return i
    names = ", ".join(repr(c.name) for c in configs)
    raise ReportInputError(f"--baseline {text!r} names no configuration; the names are {names}")


def write_report(configs: list[Configuration], out_dir: str | Path, *, baseline: str | int | None = None,
                 title: str | None = None, notes: list[str] | None = None) -> ReportFiles:  # fmt: skip
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportInputError(f"--out {str(out)!r} exists and is not a directory")
    chart_dir = out / CHART_DIR
    chart_dir.mkdir(parents=True, exist_ok=True)
    data = build_report_data(configs, resolve_baseline(configs, baseline), title, notes)
    files = draw_all(data, chart_dir)
    data["charts_files"] = {k: [f"{CHART_DIR}/{f}" for f in v] for k, v in files.items()}
    (out / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "report.md").write_text(render_markdown(data, files, CHART_DIR))
    (out / "report.html").write_text(render_html(data, files, chart_dir))
    return ReportFiles(
        out_dir=out, markdown=out / "report.md", html=out / "report.html", data=out / "report.json",
        charts={k: [chart_dir / f for f in v] for k, v in files.items()},
    )  # fmt: skip


def make_report(results: list[str | Path], out_dir: str | Path, *, labels: list[str] | None = None,
                baseline: str | int | None = None, title: str | None = None,
                notes: list[str] | None = None) -> ReportFiles:  # fmt: skip
    """Read `tenk.bench/1` result files and write the report folder; the first file is the
    baseline unless `baseline` names another (1-based number or configuration name)."""
    return write_report(load_configurations(results, labels), out_dir, baseline=baseline, title=title, notes=notes)
