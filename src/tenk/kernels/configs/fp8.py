"""Launch configs of the FP8 weight-only kernels (tenk.kernels.fp8_gemm / fp8_moe): a table per
GPU model (fp8_<gpu>.json beside this file, laid out as nvfp4.py's: "dense" by "<N>x<K>", "moe" by
"e<E>_h<H>_i<I>_top<k>", each by M bucket), with heuristics by M for shapes the table lacks (and
on CPU). benchmarks/tune_fp8.py measures the entries on the GPU, with block-128 scales (the
official FP8 checkpoints' layout); per-tensor weights use the same entries.

Block sizes are wishes; the launchers shrink them to fit the shape and the scale blocks
(`fit_block_n`, `fit_block_k`): with block scales every tile must lie inside one scale block, so
BLOCK_N divides the scale block's rows and BLOCK_K its columns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tenk.kernels.configs.nvfp4 import check_launch, dense_key, moe_key, table_entry

NUM_SMS_GUESS = 132  # H100 SXM; only sizes split-K
DIRECT_MAX_PAIRS = 16  # (token, expert) pairs up to which the MoE skips the alignment launch
# dense: from here, dequantize once (one Triton pass) + cuBLAS beats the in-kernel conversion; measured
# on an H100 for every Qwen3-30B-A3B and MiniMax-M2 attention projection at TP=1 and 2 (at 256 the
# fused kernel wins for most)
DEQUANT_MIN_M = 1024


@dataclass(frozen=True)
class Fp8Config:
    """One launch of an FP8 GEMM. impl "fused": E4M3 -> bf16 inside the GEMM; "dequant" (dense
    only): dequantize the weight to x's dtype once per call, then torch.mm."""

    block_m: int = 16  # tokens per tile: the MMA's N dimension (16 is the smallest)
    block_n: int = 64  # weight rows per tile: the MMA's M (64 per warp group)
    block_k: int = 128
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 4
    impl: str = "fused"

    def __post_init__(self):
        check_launch(self, ("block_m", "block_n", "block_k"), "FP8")

    @classmethod
    def from_dict(cls, d: dict) -> Fp8Config:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Fp8MoeConfig:
    """The two grouped GEMMs of one fused-MoE call; they share the token blocks (block_m) of one
    moe_align_block_size. direct: one token block per (token, expert) pair, no alignment launch."""

    block_m: int = 16
    w13: Fp8Config = field(default_factory=Fp8Config)
    w2: Fp8Config = field(default_factory=Fp8Config)
    direct: bool = False

    def __post_init__(self):
        for cfg in (self.w13, self.w2):
            if cfg.block_m != self.block_m:
                raise ValueError(f"both MoE GEMMs must use block_m={self.block_m}, got {cfg.block_m}")
            if cfg.impl != "fused":
                raise ValueError("the FP8 MoE has only the fused impl")

    @classmethod
    def from_dict(cls, d: dict) -> Fp8MoeConfig:
        bm = d["block_m"]
        return cls(block_m=bm, w13=Fp8Config.from_dict({**d["w13"], "block_m": bm}),
                   w2=Fp8Config.from_dict({**d["w2"], "block_m": bm}), direct=d.get("direct", False))

    def to_dict(self) -> dict:
        drop = lambda c: {k: v for k, v in c.to_dict().items() if k not in ("block_m", "impl")}
        return {"block_m": self.block_m, "direct": self.direct, "w13": drop(self.w13), "w2": drop(self.w2)}


# ---------------------------------------------------------------- fitting a config to a shape


def fit_block_k(block_k: int, k: int, scale_block_k: int | None) -> int:
    """The largest power of two <= block_k that divides the scale block (when there is one) and,
    if any does, K itself (>= 16: the MMA's K step)."""
    b = block_k
    if scale_block_k:
        while b > 16 and scale_block_k % b:
            b //= 2
    while b > 16 and k % b:
        b //= 2
    return b


def fit_block_n(block_n: int, scale_block_n: int | None) -> int:
    b = block_n
    if scale_block_n:
        while b > 16 and scale_block_n % b:
            b //= 2
    return b


def block_scales_fit(block: tuple[int, int]) -> bool:
    """The kernels need scale blocks that whole 16-wide tiles fill."""
    return all(b >= 16 and b % 16 == 0 for b in block)


# ---------------------------------------------------------------- heuristics


def _split_for(tiles: int, steps: int) -> int:
    """Split K until there are about two programs per SM, keeping >= 2 K steps per split."""
    split = 1
    while tiles * split < 2 * NUM_SMS_GUESS and steps // (split * 2) >= 2:
        split *= 2
    return split


def _tokens_tile(m: float) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128


def heuristic_dense(m: int, n: int, k: int) -> Fp8Config:
    """Decode (m <= 64): thin token tiles that stream the weight, split K to fill the GPU;
    prefill: square tiles; m >= DEQUANT_MIN_M: dequantize once + cuBLAS."""
    if m >= DEQUANT_MIN_M:
        return Fp8Config(block_m=128, block_n=128, impl="dequant")
    bm = _tokens_tile(m)
    bn = 64 if m <= 64 else 128
    tiles = -(-m // bm) * -(-n // bn)
    split = _split_for(tiles, -(-k // 128)) if m <= 256 else 1
    return Fp8Config(block_m=bm, block_n=bn, block_k=128, split_k=split, num_warps=4 if bn == 64 else 8,
                     num_stages=4 if m <= 64 else 3)


def heuristic_moe(t: int, e: int, h: int, i: int, top_k: int) -> Fp8MoeConfig:
    """By pairs per expert, as tenk.kernels.moe.default_config; the gated w13 GEMM holds two
    accumulators (gate, up) plus the block-scaled step, so its token tile stays <= 64."""
    per_expert = t * top_k / max(1, e)
    bm = min(64, _tokens_tile(per_expert))
    bn = 64 if bm <= 32 else 128
    warps = 4 if bn == 64 else 8
    stages = 4 if bm <= 32 else 3
    blocks = min(e, t * top_k) * max(1, round(per_expert / bm + 0.5))  # token blocks with work
    split13 = _split_for(blocks * -(-i // bn), -(-h // 128)) if bm <= 32 else 1
    split2 = _split_for(blocks * -(-h // bn), -(-i // 128)) if bm <= 32 else 1
    common = dict(block_m=bm, block_n=bn, block_k=128, num_warps=warps, num_stages=stages)
    return Fp8MoeConfig(block_m=bm, w13=Fp8Config(split_k=split13, **common), w2=Fp8Config(split_k=split2, **common),
                        direct=t * top_k <= DIRECT_MAX_PAIRS)


# ---------------------------------------------------------------- lookups


def dense_config(m: int, n: int, k: int, device=None) -> Fp8Config:
    entry = table_entry(device, "fp8", "dense", dense_key(n, k), m)
    return Fp8Config.from_dict(entry) if entry else heuristic_dense(m, n, k)


def moe_config(t: int, e: int, h: int, i: int, top_k: int, device=None) -> Fp8MoeConfig:
    entry = table_entry(device, "fp8", "moe", moe_key(e, h, i, top_k), t)
    return Fp8MoeConfig.from_dict(entry) if entry else heuristic_moe(t, e, h, i, top_k)
