"""Headless Chromium (Debian package `chromium`) as a test tool: load a file, save a screenshot,
return what the page logged to its console."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Chromium writes each console message to stderr as `...:CONSOLE:<line>] "<text>", source: ...`,
# at INFO level whatever the message's own level; anything there means the page logged something.
_CONSOLE = re.compile(r":CONSOLE[:(\]]|Uncaught")


@dataclass(slots=True)
class Render:
    screenshot: Path
    console: list[str]  # console lines (errors, warnings, logs)
    returncode: int
    stderr: str


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(page: Path, screenshot: Path, profile: Path, size: tuple[int, int] = (1280, 2400),
           timeout: float = 60) -> Render:  # fmt: skip
    cmd = [
        chromium_path() or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
        f"--window-size={size[0]},{size[1]}", f"--screenshot={screenshot}", page.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    console = [line for line in proc.stderr.splitlines() if _CONSOLE.search(line)]
    return Render(screenshot, console, proc.returncode, proc.stderr)
