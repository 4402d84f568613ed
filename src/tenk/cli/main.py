"""The `tenk` command. Each sub-command lives in its own module with a `register(app)`
function; heavy imports (torch, transformers) happen inside the commands so `--help` is fast."""

from __future__ import annotations

import importlib
import sys

import typer

from tenk.version import __version__

app = typer.Typer(
    name="tenk",
    help="Serve quantized MoE LLMs at high throughput, plan GPU layouts, benchmark and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order is the order `tenk --help` lists them.
_COMMAND_MODULES = (
    "demo",
    "serve",
    "generate",
    "bench",
    "plan",
    "quantize",
    "report",
    "random_checkpoint",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tenk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """tenk: quantize -> plan -> serve -> bench -> report."""


for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"tenk.cli.{_name}")
    except ModuleNotFoundError as exc:  # a command whose module is not written yet
        if exc.name != f"tenk.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
