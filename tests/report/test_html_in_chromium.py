"""report.html opens in headless Chromium without console errors, and the screenshot shows it."""

from __future__ import annotations

import pytest

from tests.report.chromium import chromium_path, render

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="needs chromium (scripts/install-test.sh installs it)")


def _png_pixels(path):
    """(width, height, distinct colours, mean channel value) of a PNG, read with matplotlib."""
    import numpy as np
    from matplotlib import image

    img = image.imread(str(path))  # float RGBA in [0, 1]
    rgb = (img[..., :3] * 255).round().astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return img.shape[1], img.shape[0], len(np.unique(packed)), float(rgb.mean())


def test_report_renders_without_console_errors(report, tmp_path):
    files = report
    shot = tmp_path / "report.png"
    r = render(files.html, shot, tmp_path / "profile")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.console == [], r.console
    assert shot.is_file() and shot.stat().st_size > 50_000
    width, height, colours, mean = _png_pixels(shot)
    assert (width, height) == (1280, 2400)
    # not blank: the tables, text and the charts' palette give hundreds of distinct colours
    assert colours > 200 and 100 < mean < 254


def test_console_check_catches_a_broken_page(tmp_path):
    """The detector above is live: a page with a script error and a missing image is caught."""
    page = tmp_path / "broken.html"
    script = '<script>console.error("boom"); notDefined();</script>'
    page.write_text(f'<html><body><img src="missing.png">{script}</body></html>')
    r = render(page, tmp_path / "broken.png", tmp_path / "profile")
    text = "\n".join(r.console)
    assert "boom" in text and "Uncaught ReferenceError" in text
