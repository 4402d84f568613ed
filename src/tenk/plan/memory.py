"""Per-GPU memory of one engine rank: weights + RoPE tables + CUDA context + activation peak,
and the KV cache that `gpu_memory_utilization x capacity` leaves - sized by the engine's own
`kv_cache_num_blocks`, so the plan prints what the engine allocates.

At start the engine (ModelRunner._size_kv_cache) measures

    used = (total - free after loading)  +  activation peak of one profiling step

and gives `total * gpu_memory_utilization - used` to KV blocks. The plan predicts the two
terms: `total - free` is weights + RoPE tables + CUDA_CONTEXT_BYTES (+ NCCL_BYTES under TP),
and the activation peak is `activation_peak_bytes` below. The CUDA graphs are captured after
the KV cache is allocated, so they are not subtracted from the KV budget: what they take beyond
the activation reservation (`cuda_graph_pool_bytes`) must fit in the `1 - gpu_memory_utilization`
headroom, which the plan checks (`headroom_ok`).

`activation_peak_bytes` is one formula of the shapes the engine's profiling step creates
(engine.model_runner._profile_peak: a forward over min(max_num_batched_tokens,
max_model_len x max_num_seqs) tokens in 256-token prompts, then logits and a top-p sample for
min(max_num_seqs, tokens) rows). It lives here, torch-free, so the engine can also call it
(for instance to check its measured peak, or to size a CPU run).
"""

from __future__ import annotations

from dataclasses import dataclass

from tenk.models.config import ModelConfig

MIB = 1 << 20
# Device memory outside the model's tensors that `total - free` shows after loading: the CUDA
# context with its loaded modules (Triton's included) ~690 MiB, and torch's 32 MiB cuBLAS
# workspace on Hopper. Measured on an H100 (torch 2.11, CUDA 13): 0.671 GiB + 32 MiB.
CUDA_CONTEXT_BYTES = 720 * MIB
# NCCL communicators and their buffers on each rank of a TP group (NCCL_BUFFSIZE 4 MiB per
# channel and peer, a few channels). An estimate: not measured on tenk's engine yet.
NCCL_BYTES = 256 * MIB
_PROFILE_SEQ_LEN = 256  # == engine.model_runner._PROFILE_SEQ_LEN
# A top-p sample over fp32 logits: the logits, their scaled copy, sort keys + int64 order + the
# sort's scratch, softmax, cumsum, mask. 30 B per logit matched the engine's measured peak on
# an H100 to within 1% (Qwen3-30B-A3B and MiniMax-M2 vocabularies, 256 rows).
_SAMPLER_BYTES_PER_LOGIT = 30
# The forward's peak counted tensor by tensor comes out ~5% under the measured one (allocator
# rounding, small temporaries), and the caching allocator keeps 2.5-6% of the peak in segments
# it cannot release afterwards; both are counted as used by the engine.
_FORWARD_SLACK = 1.05
_FRAGMENTATION = 1.05


def profile_num_tokens(max_num_batched_tokens: int, max_model_len: int, max_num_seqs: int) -> tuple[int, int]:
    """(tokens, logits rows) of the engine's profiling step."""
    total = min(max_num_batched_tokens, max_model_len * max_num_seqs)
    seq_len = min(_PROFILE_SEQ_LEN, max_model_len, total)
    n = seq_len * max(1, total // seq_len)
    return n, min(max_num_seqs, n)


def forward_peak_bytes(mc: ModelConfig, num_tokens: int, tp: int, dtype_bytes: int) -> int:
    """Peak of the transient tensors of one forward over `num_tokens` tokens on one rank."""
    n, a, H = num_tokens, dtype_bytes, mc.hidden_size
    q_r = mc.num_heads // tp * mc.head_dim
    kv_r = max(1, mc.num_kv_heads // tp) * mc.head_dim
    base = 2 * n * H * a  # hidden + residual, alive across layers
    # qkv output, fp32 QK-norm / RoPE temporaries, attention output, o_proj output
    attn = n * (q_r + 2 * kv_r) * a + n * (q_r + kv_r) * 12 + n * q_r * a + n * H * a
    ffn = 0
    if mc.is_moe:
        k, E, I_r = mc.num_experts_per_tok, mc.num_experts, mc.moe_intermediate_size // tp
        pairs = n * k
        router = n * E * (a + 8) + n * k * 12  # logits, fp32 scores / choice, top-k ids + weights
        # tokens gathered per expert, w1|w3 output, SiLU*mul, w2 output; sort keys and maps; the sum
        experts = pairs * (2 * H + 3 * I_r) * a + pairs * 24 + n * H * a
        ffn = router + experts
    if mc.intermediate_size and len(mc.moe_layers) < mc.num_layers:
        ffn = max(ffn, n * (3 * (mc.intermediate_size // tp) + H) * a)
    return base + max(attn, ffn)


def logits_peak_bytes(mc: ModelConfig, num_tokens: int, rows: int, tp: int, dtype_bytes: int) -> int:
    """Logits of `rows` sequences and a top-p sample over them, with the forward's hidden alive."""
    V = mc.vocab_size
    local = rows * -(-V // tp) * (dtype_bytes + 4)  # bf16 GEMM output and its fp32 copy
    # The all-gather's parts. Their concatenation is the logits the sampler's 30 B already count:
    # with both counted, MiniMax-M2 FP8 at TP=2 on two H200s (1024 rows) planned 79,456 KV tokens
    # where the engine allocated 85,680 (7% more); without the second copy the plan says 86,240 (0.7% more).
    gathered = rows * V * 4 if tp > 1 else 0
    return num_tokens * mc.hidden_size * dtype_bytes + local + gathered + rows * V * _SAMPLER_BYTES_PER_LOGIT


def activation_peak_bytes(
    mc: ModelConfig, *, max_num_batched_tokens: int, max_model_len: int, max_num_seqs: int, tp: int = 1,
    dtype_bytes: int = 2,
) -> int:
    """What the engine's profiling step adds on top of the loaded model, per rank, with the
    allocator's fragmentation it leaves behind (both are in the engine's `used_bytes`)."""
    n, rows = profile_num_tokens(max_num_batched_tokens, max_model_len, max_num_seqs)
    forward = forward_peak_bytes(mc, n, tp, dtype_bytes) * _FORWARD_SLACK
    peak = max(forward, logits_peak_bytes(mc, n, rows, tp, dtype_bytes))
    return int(peak * _FRAGMENTATION)


def cuda_graph_pool_bytes(
    mc: ModelConfig, *, max_num_seqs: int, max_model_len: int, block_size: int, tp: int = 1, dtype_bytes: int = 2,
    max_num_batched_tokens: int | None = None, activation: int = 0,
) -> int:
    """What the CUDA graphs take beyond the activation reservation (`activation`, free memory once
    the KV cache is allocated): static inputs and outputs, and one shared pool holding the largest
    captured forward.

    Decode graphs alone (engine.cuda_graphs; `max_num_batched_tokens` None): inputs for
    max_num_seqs rows and a block table as wide as max_model_len; the pool holds the largest
    batch's forward and comes out of the headroom. With the mixed-step graphs (engine.mixed_graphs)
    the pool holds a forward of max_num_batched_tokens tokens, which the reservation was made for,
    but it stays held while a step's logits and sample (also in the reservation) are computed."""
    a, H = dtype_bytes, mc.hidden_size
    bs = max_num_seqs
    max_blocks = -(-max_model_len // block_size)
    static = bs * (8 * 3 + 4 * 2) + bs * max_blocks * 4 + bs * H * a
    decode_pool = forward_peak_bytes(mc, bs, tp, a)
    if max_num_batched_tokens is None:
        return static + decode_pool
    t = max_num_batched_tokens
    b = min(max_num_seqs, t) + 1
    static += t * (8 * 3 + H * a) + b * (4 * 2) + b * max_blocks * 4
    pool = max(decode_pool, int(forward_peak_bytes(mc, t, tp, a) * _FORWARD_SLACK))
    return static + max(0, pool + logits_peak_bytes(mc, 0, min(max_num_seqs, t), tp, a) - activation)


def non_tensor_bytes(tp: int) -> int:
    return CUDA_CONTEXT_BYTES + (NCCL_BYTES if tp > 1 else 0)


@dataclass(slots=True)
class RankMemory:
    """One GPU of a replica, in bytes."""

    capacity: int
    utilization: float
    weights: int
    rope_tables: int
    context: int
    activation: int
    graph_pool: int
    kv_block_bytes: int
    kv_blocks: int

    @property
    def used_before_kv(self) -> int:
        return self.weights + self.rope_tables + self.context + self.activation

    @property
    def kv_bytes(self) -> int:
        return self.kv_blocks * self.kv_block_bytes

    @property
    def budget(self) -> int:
        return int(self.capacity * self.utilization)

    @property
    def headroom_ok(self) -> bool:
        """Do the CUDA graphs fit next to the KV cache (in the 1 - utilization share)?"""
        return self.used_before_kv + self.kv_bytes + self.graph_pool <= self.capacity
