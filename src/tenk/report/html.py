"""report.html: one self-contained file (charts embedded as base64 PNG, styles inline, no
script, no external asset), so it can be mailed, attached to a CI run or opened offline."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from tenk.report import tables
from tenk.report.sections import CHART_SECTIONS, footer_lines

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 24px 32px; color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { font-size: 1.8em; margin-bottom: 0.2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: 4px 10px; }
th { background: #f3f4f6; text-align: left; }
td.num { text-align: right; }
tr.baseline td { background: #fafafa; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 2px; margin-right: 0.4em; }
pre { background: #f6f8fa; padding: 10px 14px; border-radius: 6px; overflow-x: auto; }
img.chart { max-width: 100%; height: auto; border: 1px solid #eee; }
.warning { color: #9a3412; }
.note { background: #f0f7ff; border-left: 4px solid #3b6ea8; padding: 6px 12px; }
footer { margin-top: 2.5em; color: #555; font-size: 0.9em; }
"""


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], num_from: int, row_classes=None, lead=None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = []
        for j, c in enumerate(row):
            prefix = lead[i] if (lead and j == 0) else ""
            attr = ' class="num"' if j >= num_from else ""
            cells.append(f"<td{attr}>{prefix}{escape(str(c))}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="chart" alt="{escape(alt)}" src="data:image/png;base64,{b64}">'


def render_html(data: dict, chart_files: dict[str, list[str]], chart_dir: Path) -> str:
    rows = data["configurations"]
    swatches = [f'<span class="swatch" style="background:{escape(r["color"])}"></span>' for r in rows]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: nothing outside this file is fetched
        f"<title>{escape(data['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(data['title'])}</h1>", "<h2>TL;DR</h2>",
        _table(tables.TLDR_HEADER, tables.tldr_rows(data), num_from=2,
               row_classes=["baseline" if r["baseline"] else "" for r in rows], lead=swatches),
    ]  # fmt: skip
    parts += [f'<p class="note">{escape(n)}</p>' for n in data.get("notes") or ()]
    for name, heading, blurb in CHART_SECTIONS:
        files = chart_files.get(name)
        if not files:
            continue
        png = next(f for f in files if f.endswith(".png"))
        parts += [f'<h2 id="{name}">{escape(heading)}</h2>', f"<p>{escape(blurb)}</p>", _img(chart_dir / png, heading)]
    parts.append("<h2>Detailed results</h2>")
    for sw, row in zip(swatches, rows):
        parts += [
            f"<h3>{sw}{escape(tables.heading(row))}</h3>",
            f"<pre>{escape(tables.seed_listing(row))}</pre>",
            _table(tables.DETAIL_HEADER, tables.detail_rows(row), num_from=1),
        ]
        parts += [f'<p class="warning">warning: {escape(w)}</p>' for w in row["warnings"]]
    parts.append("<footer>" + "<br>".join(escape(line) for line in footer_lines(data)) + "</footer>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
