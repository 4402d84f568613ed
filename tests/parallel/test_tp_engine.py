"""The engine with tensor_parallel_size > 1 on the CPU: rank 0 in this process, the other ranks
spawned workers, gloo between them.

For the tiny model of every family, LLM.generate at TP=2 gives TP=1's tokens (greedy, seeded
sampling, a repetition penalty) and logprobs over prompts of different lengths, with chunked
prefill, decode and prefix-cache hits; so do expert parallel without overlap scheduling, 4 ranks
over 2 kv heads, and `tenk generate --tp 2`. Closing leaves no process behind and the process
ready for another engine; a killed worker makes the next call raise WorkerDiedError at once."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

from tenk import LLM, SamplingParams
from tenk.engine.errors import WorkerDiedError
from tenk.errors import ConfigError
from tenk.models.layers.embedding import VocabParallelEmbedding
from tenk.models.layers.moe import FusedMoE
from tenk.parallel.state import get_tp_size

from ..models.hf_tiny import COMMON, KINDS, save_tiny

pytestmark = pytest.mark.timeout(120)  # a collective that never pairs up fails here, not at 600 s

ENGINE = dict(device="cpu", dtype="float32", num_kv_blocks=64, max_model_len=256, max_num_seqs=8,
              max_num_batched_tokens=24)  # 24 < the 40-token prompt: its prefill is chunked  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Rank 0 shares the two cores with its workers (which take cores // ranks threads each).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    made: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in made:
            path = tmp_path_factory.mktemp(kind)
            save_tiny(kind, path)
            made[kind] = str(path)
        return made[kind]

    return get


def _requests():
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, COMMON["vocab_size"], (n,), generator=g).tolist() for n in (3, 21, 40, 7)]
    prompts.append(prompts[2][:32] + [5, 6, 7])  # shares two 16-token blocks with prompt 2
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, logprobs=2)
    params = [greedy] * len(prompts)
    params[1] = SamplingParams(temperature=0.8, seed=7, max_tokens=10, ignore_eos=True, logprobs=2)
    params[3] = SamplingParams(temperature=0.0, repetition_penalty=1.3, max_tokens=10, ignore_eos=True, logprobs=2)
    return prompts, params


def _generate(llm: LLM):
    prompts, params = _requests()
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]


def _assert_same(got, want):
    for (toks, lps), (ref_toks, ref_lps) in zip(got, want, strict=True):
        assert toks == ref_toks
        for d, ref in zip(lps, ref_lps, strict=True):
            assert d.keys() == ref.keys()
            assert max(abs(d[t] - ref[t]) for t in d) < 1e-4


_REFERENCES: dict[str, list] = {}


def _reference(path: str):
    """TP=1's outputs for `path`, computed once per checkpoint (each is compared against by
    several tests: qwen3_moe and minimax_m2 by two each)."""
    if path not in _REFERENCES:
        with LLM(path, **ENGINE) as llm:
            _REFERENCES[path] = _generate(llm)
    return _REFERENCES[path]


def _assert_gone(workers):
    """Every worker exited and this process left the group (so it can start another engine)."""
    assert all(p.exitcode is not None for p in workers.procs)
    assert not [p for p in mp.active_children() if p.name.startswith("tenk-tp-")]
    assert not dist.is_initialized() and get_tp_size() == 1


@pytest.mark.parametrize("kind", KINDS)
def test_tp2_matches_tp1(kind, tiny):
    path = tiny(kind)
    want = _reference(path)
    llm = LLM(path, **ENGINE, tensor_parallel_size=2)
    workers = llm.engine.runner.workers
    collect = False
    try:
        assert get_tp_size() == 2 and all(p.is_alive() for p in workers.procs)
        embed = next(m for m in llm.engine.runner.model.modules() if isinstance(m, VocabParallelEmbedding))
        assert embed.weight.shape[0] == COMMON["vocab_size"] // 2  # rank 0 holds half the vocabulary
        _assert_same(_generate(llm), want)
        hits = llm.engine.get_stats().prefix_cache_hits
        _assert_same(_generate(llm), want)  # again: the prompts' full blocks now come from the cache
        assert llm.engine.get_stats().prefix_cache_hits > hits
        collect = kind == "mixtral"  # no close() there: collecting the engine stops its workers too
    finally:
        if not collect:
            llm.close()
    del llm
    gc.collect()
    _assert_gone(workers)


def test_expert_parallel_without_overlap(tiny):
    path = tiny("qwen3_moe")
    want = _reference(path)
    with LLM(path, **ENGINE, tensor_parallel_size=2, enable_expert_parallel=True, async_scheduling=False) as llm:
        moe = [m for m in llm.engine.runner.model.modules() if isinstance(m, FusedMoE)]
        assert moe and all(m.expert_parallel and m.num_local_experts == 4 for m in moe)  # 8 experts over 2 ranks
        _assert_same(_generate(llm), want)
        workers = llm.engine.runner.workers
    _assert_gone(workers)


def test_four_ranks_share_two_kv_heads(tiny):
    path = tiny("minimax_m2")  # full-width QK-norm: its sum of squares is all-reduced
    want = _reference(path)
    with LLM(path, **ENGINE, tensor_parallel_size=4) as llm:
        assert llm.engine.runner.layers[0].num_kv_heads == 1  # each of the 2 kv heads lives on 2 ranks
        _assert_same(_generate(llm), want)
        workers = llm.engine.runner.workers
    _assert_gone(workers)


def test_dead_worker_raises_at_once(tiny):
    path = tiny("llama")
    with LLM(path, **ENGINE, tensor_parallel_size=2) as llm:
        workers = llm.engine.runner.workers
        _kill_one_worker(llm, path)
    _assert_gone(workers)
    with LLM(path, **ENGINE) as again:  # the process is usable again
        assert len(_generate(again)) == 5


def _kill_one_worker(llm: LLM, path: str) -> None:
    workers = llm.engine.runner.workers
    # One TP group per process: a second engine is refused with a sentence, not built wrong.
    with pytest.raises(ConfigError, match="tensor-parallel engine is open"):
        LLM(path, **ENGINE)
    with pytest.raises(ConfigError, match="already initialized"):
        LLM(path, **ENGINE, tensor_parallel_size=2)
    assert len(_generate(llm)) == 5
    os.kill(workers.procs[0].pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match=r"rank 1 \(pid \d+\) was killed by signal SIGKILL"):
        _generate(llm)
    assert time.monotonic() - start < 10
    assert not llm.engine.has_unfinished_requests()
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match="cannot go on"):
        _generate(llm)
    assert time.monotonic() - start < 1


def test_cli_generate_tp2(tiny):
    from typer.testing import CliRunner

    from tenk.cli.main import app

    path = tiny("qwen3")
    args = ["generate", path, "-p", "hello world", "-p", "the cat sat", "--device", "cpu", "--max-tokens", "8"]
    runner = CliRunner()
    one = runner.invoke(app, args)
    two = runner.invoke(app, args + ["--tp", "2"])
    assert one.exit_code == 0 and two.exit_code == 0, (one.output, two.output)
    assert two.output == one.output and "the cat sat" in two.output
    assert not dist.is_initialized() and not [p for p in mp.active_children() if p.name.startswith("tenk-tp-")]
    bad = runner.invoke(app, args + ["--tp", "3"])
    assert bad.exit_code == 1 and "not divisible by tensor-parallel size 3" in bad.output
    assert not [p for p in mp.active_children() if p.name.startswith("tenk-tp-")]


def test_symm_mem_all_reduce_is_for_cuda_only(monkeypatch):
    """TENK_SYMM_MEM_ALL_REDUCE=1 on a CPU (gloo) group changes nothing: gloo does every reduce."""
    from tenk.parallel.symm_all_reduce import maybe_symm_all_reduce

    monkeypatch.setenv("TENK_SYMM_MEM_ALL_REDUCE", "1")
    assert maybe_symm_all_reduce(None, torch.device("cpu")) is None
    monkeypatch.delenv("TENK_SYMM_MEM_ALL_REDUCE")
    assert maybe_symm_all_reduce(None, torch.device("cuda", 0)) is None  # off unless asked for
