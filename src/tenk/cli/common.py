"""Helpers shared by the CLI commands."""

from __future__ import annotations

import functools
import logging
from typing import Callable, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from tenk.errors import TenkError

F = TypeVar("F", bound=Callable)
console = Console(stderr=True)


def user_errors(fn: F) -> F:
    """Turn a TenkError (and a few common user mistakes) into one red line and exit code 1,
    never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TenkError as exc:
            console.print(Text.assemble(("error: ", "red"), str(exc)), soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
