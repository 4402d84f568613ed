"""TP=2 over gloo computes the same logits as TP=1, for every family (MiniMax's full-width
QK-norm all-reduces its sum of squares; kv heads fewer than ranks are replicated)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from tenk.kernels.attention import AttentionMetadata
from tenk.models.config import ModelConfig
from tenk.models.loader import load_model

from ..models.hf_tiny import KINDS, save_tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logits(path, seqs, expert_parallel=False):
    cfg = ModelConfig.from_dir(path)
    model = load_model(cfg, str(path), "cpu", torch.float32, expert_parallel=expert_parallel)
    lens = [len(s) for s in seqs]
    pos = torch.cat([torch.arange(n) for n in lens])
    with torch.no_grad():
        return model.compute_logits(model(torch.cat(seqs), pos, AttentionMetadata.for_prefill_without_cache(lens, "cpu")))


def _worker(rank, world, port, path, seqs, expert_parallel, out_path):
    from tenk.parallel.launch import init_tp, shutdown_tp

    torch.set_num_threads(1)
    init_tp(rank, world, f"tcp://127.0.0.1:{port}")
    try:
        logits = _logits(path, seqs, expert_parallel)
        if rank == 0:
            torch.save(logits, out_path)
    finally:
        shutdown_tp()


@pytest.mark.parametrize("kind", KINDS)
def test_tp2_matches_tp1(kind, tmp_path):
    save_tiny(kind, tmp_path)
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, 384, (n,), generator=g) for n in (6, 11)]
    ref = _logits(tmp_path, seqs)
    out = tmp_path / "tp2.pt"
    mp.start_processes(_worker, args=(2, _free_port(), tmp_path, seqs, False, out), nprocs=2, start_method="fork")
    assert (torch.load(out) - ref).abs().max().item() < 1e-4


def test_tp4_replicates_kv_heads(tmp_path):
    """4 ranks, 2 kv heads: each kv head lives on two ranks."""
    save_tiny("minimax_m2", tmp_path)
    seqs = [torch.arange(9) * 7 % 384]
    ref = _logits(tmp_path, seqs)
    out = tmp_path / "tp4.pt"
    mp.start_processes(_worker, args=(4, _free_port(), tmp_path, seqs, False, out), nprocs=4, start_method="fork")
    assert (torch.load(out) - ref).abs().max().item() < 1e-4


def test_expert_parallel_matches(tmp_path):
    save_tiny("qwen3_moe", tmp_path)
    seqs = [torch.arange(12) * 5 % 384]
    ref = _logits(tmp_path, seqs)
    out = tmp_path / "ep2.pt"
    mp.start_processes(_worker, args=(2, _free_port(), tmp_path, seqs, True, out), nprocs=2, start_method="fork")
    assert (torch.load(out) - ref).abs().max().item() < 1e-4
