"""MoE routing: router logits [T, E] -> (topk_weights fp32 [T, k], topk_ids int64 [T, k]).

Two kinds, as tenk.models.layers.moe.Router defines them:
  softmax (Qwen3-MoE, Mixtral): probabilities = softmax(logits) in fp32, pick the k largest;
  sigmoid (MiniMax-M2): scores = sigmoid(logits) in fp32, pick the k largest of
      scores + correction_bias (selection only), weight by the unbiased scores;
then, with `renormalize`, weights / their sum.

On a GPU the torch version is five to seven launches per layer (softmax, topk's sort and
gather, the sum, the divide: 0.7 ms of an 18 ms decode step at batch 256 on Qwen3-30B-A3B);
the kernel is one launch, one program per token, the top-k found by k arg-max passes over the
E values held in registers. Ties go to the lowest expert id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tenk.kernels._common import next_pow2
from tenk.kernels._triton import tl, triton

# Tests set it to run the Triton path on CPU tensors (under tenk.kernels.interpret.triton_interpreter).
FORCE_TRITON = False
MAX_EXPERTS = 1024  # one row of E fp32 values per program; beyond this the torch version runs


def topk_route_ref(logits: torch.Tensor, top_k: int, kind: str = "softmax", renormalize: bool = False,
                   correction_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "sigmoid":
        scores = torch.sigmoid(logits.float())
        choice = scores if correction_bias is None else scores + correction_bias
        topk_ids = torch.topk(choice, top_k, dim=-1, sorted=False).indices
        topk_weights = scores.gather(1, topk_ids)
    else:
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        topk_weights, topk_ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
    return topk_weights, topk_ids


@triton.jit
def _topk_route_kernel(logits_ptr, bias_ptr, w_ptr, ids_ptr, E, s_lt, s_wt, s_it,
                       K: tl.constexpr, BLOCK_E: tl.constexpr, SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr,
                       RENORM: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK_E)
    ok = e < E
    x = tl.load(logits_ptr + t * s_lt + e, mask=ok, other=float("-inf")).to(tl.float32)
    if SIGMOID:
        score = 1.0 / (1.0 + tl.exp(-x))
        choice = score
        if HAS_BIAS:
            choice = score + tl.load(bias_ptr + e, mask=ok, other=0.0).to(tl.float32)
    else:
        p = tl.exp(x - tl.max(x, 0))
        score = p / tl.sum(p, 0)
        choice = score
    choice = tl.where(ok, choice, float("-inf"))
    total = 0.0
    for j in tl.static_range(K):
        best = tl.max(choice, 0)
        idx = tl.min(tl.where(choice == best, e, BLOCK_E), 0)  # lowest id among ties
        w = tl.sum(tl.where(e == idx, score, 0.0), 0)
        tl.store(w_ptr + t * s_wt + j, w)
        tl.store(ids_ptr + t * s_it + j, idx.to(tl.int64))
        total += w
        choice = tl.where(e == idx, float("-inf"), choice)
    if RENORM:
        for j in tl.static_range(K):
            w = tl.load(w_ptr + t * s_wt + j)
            tl.store(w_ptr + t * s_wt + j, w / total)


def topk_route_triton(logits: torch.Tensor, top_k: int, kind: str = "softmax", renormalize: bool = False,
                      correction_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    T, E = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    weights = torch.empty((T, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((T, top_k), dtype=torch.int64, device=logits.device)
    if T == 0:
        return weights, ids
    block = max(16, next_pow2(E))
    bias = correction_bias if correction_bias is not None else logits  # unread without HAS_BIAS
    _topk_route_kernel[(T,)](
        logits, bias, weights, ids, E, logits.stride(0), weights.stride(0), ids.stride(0),
        K=top_k, BLOCK_E=block, SIGMOID=kind == "sigmoid", HAS_BIAS=correction_bias is not None,
        RENORM=renormalize, num_warps=4 if block >= 256 else 1,
    )
    return weights, ids


def topk_route(logits: torch.Tensor, top_k: int, kind: str = "softmax", renormalize: bool = False,
               correction_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if (logits.is_cuda or FORCE_TRITON) and logits.dim() == 2 and logits.shape[1] <= MAX_EXPERTS:
        return topk_route_triton(logits, top_k, kind, renormalize, correction_bias)
    return topk_route_ref(logits, top_k, kind, renormalize, correction_bias)
