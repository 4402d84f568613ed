"""Tensor parallel on two CUDA GPUs: NCCL between the ranks, decode steps replayed from CUDA
graphs that hold the all-reduces. In fp32 TP=2 must give TP=1's greedy tokens on one GPU, as it
does over gloo on the CPU; an NVFP4 copy runs its Triton kernels on half the FFN per rank."""

from __future__ import annotations

import pytest
import torch

from tenk import LLM
from tenk.parallel.state import get_tp_size

from .test_tp_engine import _generate, tiny  # noqa: F401  (tiny is a fixture)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"),
]

ENGINE = dict(device="cuda", num_kv_blocks=64, max_model_len=256, max_num_seqs=8, max_num_batched_tokens=24)


def _assert_close(got, want, tol: float = 2e-3):
    # Triton's fp32 dots may round through tf32, so logprobs get a looser bound than over gloo.
    for (toks, lps), (ref_toks, ref_lps) in zip(got, want, strict=True):
        assert toks == ref_toks
        for d, ref in zip(lps, ref_lps, strict=True):
            assert d.keys() == ref.keys() and max(abs(d[t] - ref[t]) for t in d) <= tol


def _run(path: str, **kw):
    with LLM(path, **ENGINE, **kw) as llm:
        runner = llm.engine.runner
        if kw.get("tensor_parallel_size", 1) > 1:
            assert get_tp_size() == 2 and runner.workers is not None
        assert runner.graph_runner is not None and runner.graph_runner.graphs  # decode replays graphs
        return _generate(llm)


@pytest.mark.parametrize("kind", ["qwen3_moe", "minimax_m2"])
def test_tp2_nccl_graphs_match_tp1(kind, tiny):  # noqa: F811
    path = tiny(kind)
    want = _run(path, dtype="float32")
    _assert_close(_run(path, dtype="float32", tensor_parallel_size=2), want)
    _assert_close(_run(path, dtype="float32", tensor_parallel_size=2, enable_expert_parallel=True), want)
    assert get_tp_size() == 1


def test_tp2_nvfp4_experts(tiny, tmp_path):  # noqa: F811
    from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint

    quantize_checkpoint(tiny("qwen3_moe"), tmp_path / "q", QuantizeOptions(format="nvfp4"))
    one = _run(str(tmp_path / "q"), dtype="bfloat16")
    two = _run(str(tmp_path / "q"), dtype="bfloat16", tensor_parallel_size=2)
    # bf16 sums in another order on two ranks: the first token of each greedy request agrees
    # where its top two logprobs are not within bf16 rounding of each other.
    firsts = [(a[0][0], b[0][0]) for a, b in zip(one, two, strict=True)]
    assert sum(x == y for x, y in firsts) >= len(firsts) - 1, firsts


def test_symm_mem_all_reduce_gives_nccls_tokens(tiny, monkeypatch):  # noqa: F811
    """TENK_SYMM_MEM_ALL_REDUCE=1: bf16 all-reduces go through the one-shot symmetric-memory kernel
    (captured in the decode graphs too); two ranks' sums round once either way, so the greedy
    tokens and logprobs are NCCL's exactly."""
    from tenk.parallel import state

    path = tiny("qwen3_moe")
    want = _run(path, dtype="bfloat16", tensor_parallel_size=2)
    monkeypatch.setenv("TENK_SYMM_MEM_ALL_REDUCE", "1")
    with LLM(path, **ENGINE, dtype="bfloat16", tensor_parallel_size=2) as llm:
        assert state._FAST_ALL_REDUCE is not None  # set up, not fallen back to NCCL
        got = _generate(llm)
    assert state._FAST_ALL_REDUCE is None
    _assert_close(got, want, tol=0.0)
