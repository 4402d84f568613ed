"""benchmarks/quality.py on the real SmolLM2-135M: what `tenk quantize` (all linear layers but
lm_head) costs in perplexity and top-1 agreement, teacher-forced through tenk's own model code."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.benchmarks.test_serving_scripts import BENCH

sys.path.insert(0, str(BENCH))
import quality  # noqa: E402


@pytest.mark.slow
def test_fp8_stays_within_two_percent_and_nvfp4_within_reach(smollm2_dir):
    """1,024 tokens in fp32 (the first 512 alone read +3.1% for FP8, too few to resolve 2%; the
    issue's table runs 4,096 through the script). A scale applied twice, a wrong nibble order or a
    lost global scale moves the perplexity far past these bounds, and the unquantized row must be a
    real English model (perplexity far below the vocabulary's 49,152)."""
    result = quality.measure(smollm2_dir, 1024, torch.float32, "cpu", ("unquantized", "fp8 per-tensor", "nvfp4"))
    base, fp8, nvfp4 = result["rows"]
    assert base["perplexity"] < 60 and base["top1_agreement"] == 1.0
    assert abs(fp8["perplexity_vs_unquantized"]) < 0.02 and fp8["top1_agreement"] > 0.85
    assert 0 < nvfp4["perplexity_vs_unquantized"] < 0.5 and nvfp4["top1_agreement"] > 0.6
