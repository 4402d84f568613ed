"""`tenk serve MODEL`: a preset name needs random weights (--load-format dummy), and a name that is
neither a folder nor a preset is one line naming the presets; nothing starts in either case."""

from __future__ import annotations

from typer.testing import CliRunner

from tenk.cli.main import app


def _error_lines(args: list[str]) -> list[str]:
    res = CliRunner().invoke(app, ["serve", *args, "--device", "cpu", "--port", "0"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    return [line for line in res.output.splitlines() if line.strip()]


def test_preset_without_dummy_weights_is_one_line():
    (line,) = _error_lines(["tiny-moe"])
    assert line == "error: 'tiny-moe' is a preset, which has no weights: add --load-format dummy (random weights)"


def test_unknown_model_names_the_presets(tmp_path):
    (line,) = _error_lines([str(tmp_path / "missing")])
    assert line.startswith(f"error: model directory {str(tmp_path / 'missing')!r} does not exist")
    assert "tiny-moe" in line and "--load-format dummy" in line
