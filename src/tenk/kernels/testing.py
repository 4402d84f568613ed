"""Random inputs for checking Triton kernels against their torch references.

Shared by tests/kernels/ (tiny shapes, Triton interpreter on CPU) and benchmarks/kernels_gpu.py
(realistic shapes on a GPU), so both exercise the same cases: paged caches with shuffled blocks,
NaN-poisoned unused cache slots and block-table entries (a kernel that reads past a context turns
its output into NaN), q/k/v as strided views of one fused qkv projection, and -1 expert ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tenk.kernels.attention import AttentionMetadata


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp64; NaN anywhere in a gives NaN (never a pass)."""
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-30))


def capture_cuda_graph(fn) -> "torch.cuda.CUDAGraph":
    """fn() captured as a CUDA graph, after one run on a side stream (Triton compiles and the
    allocator settles there, as graph capture requires)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def _gen(device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------- attention


@dataclass
class AttentionCase:
    q: torch.Tensor  # [T, Hq, D] view of a fused qkv buffer
    k: torch.Tensor  # [T, Hkv, D] this step's keys (view)
    v: torch.Tensor  # [T, Hkv, D]
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]; prefix filled, the rest NaN
    v_cache: torch.Tensor
    meta: AttentionMetadata
    scale: float
    k_scale: float = 1.0
    v_scale: float = 1.0


def make_attention_case(
    seqs: list[tuple[int, int]],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int = 16,
    dtype: torch.dtype = torch.bfloat16,
    cache_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    max_blocks: int | None = None,
    kv_scale: float = 1.0,
) -> AttentionCase:
    """seqs: (context length after this step, query length) per sequence; the queries are the last
    q_len positions, the first context-q_len positions are already cached."""
    cache_dtype = cache_dtype or dtype
    g = _gen(device, seed)
    lens = [ctx for ctx, _ in seqs]
    qlens = [ql for _, ql in seqs]
    assert all(0 <= ql <= ctx for ctx, ql in seqs)
    T = sum(qlens)
    need = [-(-ctx // block_size) for ctx in lens]
    width = max_blocks or max(need)
    num_blocks = sum(need) + 2
    perm = torch.randperm(num_blocks, generator=_gen("cpu", seed)).tolist()
    poison_block = perm.pop()  # unused block-table entries point here; it stays NaN
    tables = torch.full((len(seqs), width), poison_block, dtype=torch.int32)
    for i, n in enumerate(need):
        tables[i, :n] = torch.tensor([perm.pop() for _ in range(n)], dtype=torch.int32)

    hq, hkv, d = num_q_heads, num_kv_heads, head_dim
    qkv = torch.randn(T, (hq + 2 * hkv) * d, generator=g, device=device, dtype=torch.float32).to(dtype)
    q = qkv[:, : hq * d].view(T, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(T, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(T, hkv, d)

    shape = (num_blocks, block_size, hkv, d)
    k_cache = torch.full(shape, float("nan"), device=device).to(cache_dtype)
    v_cache = torch.full(shape, float("nan"), device=device).to(cache_dtype)
    kc_flat = k_cache.view(-1, hkv, d)
    vc_flat = v_cache.view(-1, hkv, d)
    slots = []
    for i, (ctx, ql) in enumerate(seqs):
        pos = torch.arange(ctx)
        seq_slots = tables[i, pos // block_size].long() * block_size + pos % block_size
        n_prefix = ctx - ql
        if n_prefix:
            dst = seq_slots[:n_prefix].to(device)
            kk = torch.randn(n_prefix, hkv, d, generator=g, device=device)
            vv = torch.randn(n_prefix, hkv, d, generator=g, device=device)
            kc_flat[dst] = (kk.to(dtype).float() / kv_scale).to(cache_dtype)
            vc_flat[dst] = (vv.to(dtype).float() / kv_scale).to(cache_dtype)
        slots.append(seq_slots[n_prefix:])
    slot_mapping = torch.cat(slots) if slots else torch.empty(0, dtype=torch.int64)

    cu = [0]
    for ql in qlens:
        cu.append(cu[-1] + ql)
    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        slot_mapping=slot_mapping.to(device),
        block_tables=tables.to(device),
        max_seqlen_q=max(qlens),
        max_seqlen_k=max(lens),
        cu_seqlens_q_cpu=cu,
        seq_lens_cpu=list(lens),
        decode_only=all(ql == 1 for ql in qlens),
    )
    return AttentionCase(q, k, v, k_cache, v_cache, meta, d**-0.5, kv_scale, kv_scale)


def check_attention(case: AttentionCase, **kernel_kwargs) -> dict:
    """Store + attend with the references and with Triton on separate cache copies.
    Returns the relative error of the output and whether the stored caches are identical."""
    from tenk.kernels import attention_triton as at

    ref_kc, ref_vc = case.k_cache.clone(), case.v_cache.clone()
    at.store_kvcache_scaled_ref(case.k, case.v, ref_kc, ref_vc, case.meta.slot_mapping, case.k_scale, case.v_scale)
    ref = at.paged_attention_scaled_ref(case.q, case.k, case.v, ref_kc, ref_vc, case.meta, case.scale,
                                        case.k_scale, case.v_scale)
    kc, vc = case.k_cache.clone(), case.v_cache.clone()
    at.store_kvcache_triton(case.k, case.v, kc, vc, case.meta.slot_mapping, case.k_scale, case.v_scale)
    out = torch.full_like(case.q, float("nan"))  # poisoned: every row must be written
    at.paged_attention_triton(case.q, case.k, case.v, kc, vc, case.meta, case.scale,
                              k_scale=case.k_scale, v_scale=case.v_scale, out=out, **kernel_kwargs)
    same = lambda a, b: bool(torch.equal(a.view(torch.uint8), b.view(torch.uint8)))  # NaN-safe bitwise
    return {"rel_err": rel_err(out, ref), "cache_equal": same(kc, ref_kc) and same(vc, ref_vc)}


# ---------------------------------------------------------------- MoE


@dataclass
class MoECase:
    x: torch.Tensor  # [T, H]
    w13: torch.Tensor  # [E, 2I, H]
    w2: torch.Tensor  # [E, H, I]
    topk_weights: torch.Tensor  # [T, k] fp32
    topk_ids: torch.Tensor  # [T, k] int32, -1 = expert on another rank


def make_moe_case(
    tokens: int,
    hidden: int,
    inter: int,
    num_experts: int,
    top_k: int,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    drop_fraction: float = 0.0,
) -> MoECase:
    """Softmax router over random logits, top-k renormalised; drop_fraction of the pairs get id -1."""
    g = _gen(device, seed)
    f32 = dict(generator=g, device=device, dtype=torch.float32)
    x = torch.randn(tokens, hidden, **f32).to(dtype)
    w13 = (torch.randn(num_experts, 2 * inter, hidden, **f32) * hidden**-0.5).to(dtype)
    w2 = (torch.randn(num_experts, hidden, inter, **f32) * inter**-0.5).to(dtype)
    probs = torch.randn(tokens, num_experts, **f32).softmax(-1)
    weights, ids = probs.topk(top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    ids = ids.to(torch.int32)
    if drop_fraction > 0:
        drop = torch.rand(tokens, top_k, **f32) < drop_fraction
        ids = ids.masked_fill(drop, -1)
    return MoECase(x, w13, w2, weights, ids)
