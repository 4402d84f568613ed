"""The engine on a GPU: Triton attention and MoE under the scheduler, CUDA graphs for decode
and for mixed steps. In fp32 the graph replays, the eager GPU path and the CPU reference path
must agree on greedy tokens."""

from __future__ import annotations

import random

import pytest
import torch

from tenk.engine.sampling_params import SamplingParams

from .test_engine import random_prompts, run_all

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_cuda_graphs_match_eager_and_cpu(make_engine):
    rng = random.Random(0)
    prompts = random_prompts(40, 500, rng, 1, 80)
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(4, 24), ignore_eos=True) for _ in prompts]
    results = {}
    for name, kw in {
        "graphs": dict(device="cuda", max_num_seqs=32),
        "decode_graphs": dict(device="cuda", max_num_seqs=32, cudagraph_mode="full_decode_only"),
        # decode batches of 9-32 replay the mixed-step graphs
        "decode_graphs_to_8": dict(device="cuda", max_num_seqs=32, max_cudagraph_capture_size=8),
        "eager": dict(device="cuda", max_num_seqs=32, enforce_eager=True),
        "cpu": dict(device="cpu", max_num_seqs=32),
    }.items():
        engine = make_engine(dtype="float32", max_num_batched_tokens=256, num_kv_blocks=512, **kw)
        mixed_steps = []
        if name != "cpu" and "enforce_eager" not in kw:
            assert engine.runner.graph_runner is not None and engine.runner.graph_runner.graphs
            mixed = engine.runner.mixed_runner
            assert bool(mixed is not None and mixed.graphs) == (name != "decode_graphs")
            if mixed is not None:
                run = mixed.run
                mixed.run = lambda batch: mixed_steps.append(batch.num_tokens) or run(batch)
        results[name] = [o.outputs[0].token_ids for o in run_all(engine, prompts, params)]
        assert engine.block_manager.num_free_blocks == 512
        if name in ("graphs", "decode_graphs_to_8"):  # prefill chunks and mixed steps replayed graphs
            assert len(mixed_steps) >= 3 and max(mixed_steps) > 100, mixed_steps
    assert results["graphs"] == results["eager"] == results["decode_graphs"] == results["decode_graphs_to_8"]
    same = sum(a == b for a, b in zip(results["graphs"], results["cpu"]))
    assert same >= len(prompts) - 1, f"only {same}/{len(prompts)} prompts agree between GPU and CPU"


@needs_cuda
def test_gpu_sizing_and_seeded_sampling(make_engine):
    # KV sized from free GPU memory; a seeded request reproduces across different batches.
    engine = make_engine(device="cuda", dtype="float32", num_kv_blocks=None, gpu_memory_utilization=0.5,
                         max_model_len=1024, max_num_seqs=16)
    stats = engine.get_stats()
    assert stats.kv_capacity_tokens >= 1024
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=5, max_tokens=20, ignore_eos=True)
    alone = run_all(engine, [[5, 6, 7]], seeded)[0].outputs[0].token_ids
    noise = SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True)
    crowd = run_all(engine, [[9, 9], [5, 6, 7], [1, 2, 3, 4]], [noise, seeded, noise])[1].outputs[0].token_ids
    assert crowd == alone
