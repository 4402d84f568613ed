"""`tenk report RESULT.json ... --out DIR`: charts (PNG + SVG), report.md, a self-contained
report.html and report.json from `tenk bench` result files, the first one the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tenk.cli.common import console, user_errors


def register(app: typer.Typer) -> None:
    app.command("report")(report)


@user_errors
def report(
    results: List[Path] = typer.Argument(..., help="Result files of `tenk bench --out FILE.json`, one per "
                                         "configuration; the first is the baseline unless --baseline says otherwise."),
    out: Path = typer.Option(Path("tenk-report"), "--out", "-o", help="Folder to write the report into (created)."),
    label: Optional[List[str]] = typer.Option(
        None, "--label", "-l", help="KEY=VALUE for every file or N:KEY=VALUE for the N-th (1-based); keys: name, "
        "model, quantization, layout, gpu, gpus. E.g. --label gpu='H100 80GB' --label 2:name='NVFP4 TP=1 DP=2'."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="The configuration the others are compared "
                                           "with: its number (1-based) or its name. Default: the first file."),
    title: Optional[str] = typer.Option(None, "--title", help="Report title (default: model, quantization, layout "
                                        "and GPU the configurations share)."),
) -> None:  # fmt: skip
    """Write OUT/report.md, OUT/report.html (opens offline, charts embedded), OUT/report.json (every
    number drawn) and OUT/charts/*.png|svg: peak throughput with "N.NNx vs baseline", throughput vs
    concurrency, latency (TTFT/TPOT p50/p99) and, when the results carry a layout block, memory per GPU."""
    from tenk.report import make_report

    with console.status("drawing charts"):
        files = make_report(list(results), out, labels=list(label or ()), baseline=baseline, title=title)
    print_summary(files)


def print_summary(files) -> None:
    import json

    from tenk.report.charts import fmt_tps

    data = json.loads(files.data.read_text())
    for row in data["configurations"]:
        pk = row["peak"]
        rel = "baseline" if row["baseline"] else (f"{pk['vs_baseline']:.2f}x" if pk and pk["vs_baseline"] else "n/a")
        peak = f"{fmt_tps(pk['output_throughput'])} tok/s at c={pk['concurrency']}" if pk else "no successful level"
        console.print(f"  {row['name']}: peak {peak} ({rel})", highlight=False)
    console.print(f"report: {files.html}  (also {files.markdown.name}, {files.data.name}, "
                  f"{len(files.charts)} charts in {files.out_dir / 'charts'})", highlight=False)  # fmt: skip
