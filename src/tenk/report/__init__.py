"""tenk report: bench results -> charts (PNG + SVG), report.md, a self-contained report.html and
report.json (every number drawn).

    from tenk.report import make_report
    files = make_report(["fp8-tp4.json", "nvfp4-tp2-dp2.json"], "report/", labels=["gpu=H100 80GB"])
    files.html   # report/report.html

Files, one job each: inputs (read result files, names and labels), data (report.json),
charts (matplotlib), tables (text rows), markdown, html, sections (shared text), build
(orchestration); for `tenk demo`: demo (the workflow), demo_checkpoints, replica (a server in
its own process), layout (a served configuration's memory block). FORMAT.md documents the optional `config.labels` / `config.layout` blocks a
result may carry, and report.json.
"""

from tenk.report.build import ReportFiles, make_report, write_report
from tenk.report.data import SCHEMA
from tenk.report.inputs import Configuration, ReportInputError, load_configurations

__all__ = ["SCHEMA", "Configuration", "ReportFiles", "ReportInputError", "load_configurations", "make_report",
           "write_report"]  # fmt: skip
