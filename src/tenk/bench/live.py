"""The live rich table of `tenk bench`: finished levels with their numbers, and the level in
progress with a running count. The sweep calls `progress(state)` a few times a second and
`level_done(result)` after each level."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from tenk.bench.metrics import LevelResult
from tenk.bench.output import level_label


def _f(v, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


class LiveTable:
    def __init__(self, console: Console | None = None, title: str = "tenk bench") -> None:
        self.console = console or Console(stderr=True)
        self.title = title
        self.done: list[LevelResult] = []
        self.state: dict | None = None
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> "LiveTable":
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.state = None
        self._live.update(self._render())
        self._live.__exit__(*exc)

    def progress(self, state: dict) -> None:
        self.state = state
        self._live.update(self._render())

    def level_done(self, res: LevelResult) -> None:
        self.done.append(res)
        self.state = None
        self._live.update(self._render())

    def _render(self) -> Table:
        t = Table(title=self.title, title_justify="left", expand=False)
        for col in ("level", "requests", "failed", "out tok/s", "steady tok/s", "req/s", "TTFT p50/p99 ms", "TPOT p50 ms", "ITL p50 ms"):
            t.add_column(col, justify="right")
        best = max((r.output_throughput for r in self.done), default=None)
        for r in self.done:
            label = level_label({"concurrency": r.concurrency, "request_rate": r.request_rate})
            style = "bold green" if r.output_throughput == best and len(self.done) > 1 else None
            t.add_row(
                label,
                f"{r.completed}/{r.num_prompts}" + (" partial" if r.interrupted or r.timed_out else ""),
                str(r.failed) if r.failed else "",
                _f(r.output_throughput),
                _f((r.steady or {}).get("output_throughput")),
                _f(r.request_throughput, ",.1f"),
                f"{_f(r.ttft_ms.p50, ',.1f')} / {_f(r.ttft_ms.p99, ',.1f')}",
                _f(r.tpot_ms.p50, ",.2f"),
                _f(r.itl_ms.p50, ",.2f"),
                style=style,
            )
        s = self.state
        if s is not None:
            rate = s["chunks"] / s["elapsed"] if s["elapsed"] > 0 else 0.0
            t.add_row(
                s["label"],
                f"{s['ok'] + s['failed']}/{s['num_prompts']} ({s['in_flight']} in flight)",
                str(s["failed"]) if s["failed"] else "",
                f"~{rate:,.0f} chunks/s",
                "", "", f"{s['elapsed']:.0f} s", "", "",
                style="yellow",
            )
        return t
