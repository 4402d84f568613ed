"""Launch configs of the NVFP4 kernels: a table per GPU model (nvfp4_<gpu>.json beside this file)
keyed by shape and M bucket, with heuristics for shapes the table lacks (and on CPU). The table
machinery here serves the FP8 kernels' tables too (fp8.py, fp8_<gpu>.json).

    dense:  "<N>x<K>"                       -> {"<M bucket>": Nvfp4Config fields}
    moe:    "e<E>_h<H>_i<I>_top<k>"         -> {"<M bucket>": {"impl", "block_m", "w13": {...}, "w2": {...}}}

M is the number of tokens (rows of x) for both; a bucket is the largest listed M <= the real M.
The shipped tables were written from the heuristics below without a GPU ("tuned": false in the
file); benchmarks/tune_nvfp4.py measures candidates on the GPU and rewrites them. An entry with an
"ms" field was measured; one without is a guess, and a GPU of the same architecture's measured
entry for that bucket goes before it (SAME_ARCHITECTURE: the H200 is the H100's chip with more and
faster memory; its table measures the buckets the H100's does, seeded from the H100's winners).
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

M_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
NUM_SMS_GUESS = 132  # H100 SXM; only used to size split-K when no table entry exists
IMPLS = ("fused", "dequant")
# the MoE also has "wgmma": the fused GEMMs as Gluon kernels with asynchronous wgmma (prefill sizes on
# Hopper; nvfp4_moe_wgmma), falling back to the Triton ones off the GPU
MOE_IMPLS = IMPLS + ("wgmma",)
_DIR = Path(__file__).parent


def check_launch(cfg, tiles: tuple[str, ...], what: str) -> None:
    """The rules every GEMM launch config of tenk's kernels follows (NVFP4 here, FP8 in fp8.py):
    a known impl, power-of-two tiles of at least 16 (the MMA's smallest), sane split / warps / stages."""
    if cfg.impl not in IMPLS:
        raise ValueError(f"unknown {what} impl {cfg.impl!r} (choose from {IMPLS})")
    for name in tiles:
        v = getattr(cfg, name)
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {v}")
    if cfg.split_k < 1 or cfg.num_warps not in (1, 2, 4, 8, 16) or cfg.num_stages < 1:
        raise ValueError(f"bad {what} launch config {cfg}")
    maxnreg = getattr(cfg, "maxnreg", 0)
    if maxnreg and not (24 <= maxnreg <= 256 and maxnreg % 8 == 0):
        raise ValueError(f"maxnreg must be 0 (the compiler's choice) or a multiple of 8 in [24, 256], got {maxnreg}")


@dataclass(frozen=True)
class Nvfp4Config:
    """One launch of the NVFP4 GEMM kernel. impl "fused": dequantize inside the GEMM; "dequant":
    dequantize the weights to bf16 once per call, then the bf16 GEMM (compute-bound sizes)."""

    block_m: int = 16  # tokens per tile: the MMA's N dimension (16 is the smallest)
    block_n: int = 64  # weight rows per tile: the MMA's M (64 per warp group)
    block_kq: int = 32  # columns of each K quarter per step (x4 = K per step)
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 4
    impl: str = "fused"
    # registers per thread the compiler may use (0: its own choice). A cap can fit one more CTA on an
    # SM: the wgmma MoE's 8-warp w2 tile of 128 x 128 x 32 takes 166 registers, one CTA an SM; at 128
    # (no spills) two share it: Qwen3-30B-A3B's w2 launch at 16,384 tokens 1.11x on an H100, the whole
    # MoE call 1.00x-1.03x (benchmarks/results/moe_wgmma_maxnreg_h100.json)
    maxnreg: int = 0
    # MoE decode GEMMs (Triton kernel): bytes of each 32-row expert tile's first K steps that the
    # grid's first programs fetch into L2 before their PDL wait, while the previous launch (the align
    # kernel for w1|w3, w1|w3's last programs for w2) leaves DRAM idle (nvfp4_moe.prefetch_args).
    # Qwen3-30B-A3B at 16 tokens on an H100, both GEMMs at 8,192: whole MoE calls 1.027x in chains of
    # 4 (benchmarks/results/moe_prefetch_table_ab_h100.json); 0 (off) where the tuner found no gain
    prefetch: int = 0
    # MoE GEMMs (Triton kernel, token blocks of 32 or more): a block whose pairs fit half of it (an
    # expert's last block holds its pair count mod block_m) runs a half-wide tile, half the MMA and
    # activation reads. On an H100, whole MoE calls with both GEMMs narrowing: Qwen3-30B-A3B at 512
    # and 1,024 tokens 1.02x, MiniMax-M2 at 1,024 1.05x-1.07x, but its TP=2 shard at 256 0.96x
    # (benchmarks/results/moe_narrow_table_ab_h100.json), so the tuner decides per bucket
    narrow: bool = False

    def __post_init__(self):
        check_launch(self, ("block_m", "block_n", "block_kq"), "NVFP4")
        if self.prefetch and not (16 <= self.prefetch <= 65536 and self.prefetch % 16 == 0):
            raise ValueError(f"prefetch must be 0 (off) or a multiple of 16 bytes up to 65536, got {self.prefetch}")

    def launch_options(self) -> dict:
        """Compiler options of the kernel launch beyond warps and stages."""
        return {"maxnreg": self.maxnreg} if self.maxnreg else {}

    @classmethod
    def from_dict(cls, d: dict) -> "Nvfp4Config":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        d = asdict(self)
        for knob in ("maxnreg", "prefetch", "narrow"):  # tables list these only where one was chosen
            if not d[knob]:
                del d[knob]
        return d


@dataclass(frozen=True)
class Nvfp4MoeConfig:
    """The two grouped GEMMs of one fused-MoE call. They share the token blocks (block_m) of one
    moe_align_block_size; impl "dequant" runs the bf16 grouped-GEMM MoE on dequantized experts."""

    block_m: int = 16
    w13: Nvfp4Config = field(default_factory=Nvfp4Config)
    w2: Nvfp4Config = field(default_factory=Nvfp4Config)
    impl: str = "fused"
    direct: bool = False  # tiny batches: one token block per (token, expert) pair, no alignment launch

    def __post_init__(self):
        if self.impl not in MOE_IMPLS:
            raise ValueError(f"unknown NVFP4 MoE impl {self.impl!r} (choose from {MOE_IMPLS})")
        for cfg in (self.w13, self.w2):
            if cfg.block_m != self.block_m:
                raise ValueError(f"both MoE GEMMs must use block_m={self.block_m}, got {cfg.block_m}")
            # wgmma: whole warp groups of 64 weight rows each, no split-K partials, aligned blocks
            if self.impl == "wgmma" and (cfg.num_warps not in (4, 8) or cfg.block_n % (16 * cfg.num_warps)
                                         or cfg.split_k != 1 or self.direct):
                raise ValueError(f"the wgmma MoE needs 4 or 8 warps, block_n a multiple of 16 per warp, "
                                 f"split_k 1 and aligned blocks, got {self}")

    @classmethod
    def from_dict(cls, d: dict) -> "Nvfp4MoeConfig":
        bm = d["block_m"]
        return cls(block_m=bm, w13=Nvfp4Config.from_dict({**d["w13"], "block_m": bm}),
                   w2=Nvfp4Config.from_dict({**d["w2"], "block_m": bm}), impl=d.get("impl", "fused"),
                   direct=d.get("direct", False))

    def to_dict(self) -> dict:
        drop = lambda c: {k: v for k, v in c.to_dict().items() if k not in ("block_m", "impl")}
        return {"impl": self.impl, "block_m": self.block_m, "direct": self.direct, "w13": drop(self.w13),
                "w2": drop(self.w2)}


# ---------------------------------------------------------------- keys and files


def bucket(m: int) -> int:
    return max([b for b in M_BUCKETS if b <= max(1, m)])


def dense_key(n: int, k: int) -> str:
    return f"{n}x{k}"


def moe_key(e: int, h: int, i: int, top_k: int) -> str:
    return f"e{e}_h{h}_i{i}_top{top_k}"


def device_tag(name: str) -> str:
    """A GPU's table tag: "h100" / "h200" for those families (every H100 / H200 variant, GH200 too),
    else its name in lower case with "_" for the rest ("nvidia_a100_sxm4_80gb")."""
    up = name.upper()
    for tag in ("H200", "H100"):
        if tag in up:
            return tag.lower()
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def gpu_tag(device=None) -> str | None:
    """The table tag of the GPU of `device` (or the current one), None off the GPU."""
    import torch

    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None
    index = torch.device(device).index if device is not None else None
    return _tag_of(index if index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _tag_of(index: int) -> str:
    import torch

    return device_tag(torch.cuda.get_device_name(index))


def table_path(tag: str, fmt: str = "nvfp4") -> Path:
    """The shipped table of one weight format's kernels (nvfp4, fp8) on one GPU model."""
    return _DIR / f"{fmt}_{tag}.json"


def user_table_folders() -> list[Path]:
    """The folders of $TENK_KERNEL_CONFIGS (os.pathsep-separated): tables tuned on a GPU the package
    has none for, or kept outside it. They come before the package's, and the tuners write there."""
    return [Path(d) for d in os.environ.get("TENK_KERNEL_CONFIGS", "").split(os.pathsep) if d]


def find_table(tag: str, fmt: str = "nvfp4") -> Path | None:
    """The table a run uses (looked for when a format's table is first needed): the first
    `<fmt>_<tag>.json` in user_table_folders(), else the package's."""
    for path in (*(folder / table_path(tag, fmt).name for folder in user_table_folders()), table_path(tag, fmt)):
        if path.exists():
            return path
    return None


@functools.lru_cache(maxsize=None)
def load_table(tag: str | None, fmt: str = "nvfp4") -> dict:
    """The table of one format on one GPU, read once (every kernel launch looks configs up)."""
    path = find_table(tag, fmt) if tag is not None else None
    if path is None:
        return {"dense": {}, "moe": {}}
    data = json.loads(path.read_text())
    return {"dense": data.get("dense", {}), "moe": data.get("moe", {}), "tuned": data.get("tuned", False)}


# GPUs with the same SMs, shared memory and registers, where launch configs carry over: a bucket
# one has not measured takes another's measured config before its own guess.
SAME_ARCHITECTURE = {"h200": ("h100",), "h100": ("h200",)}


def table_entry(device, fmt: str, section: str, key: str, m: int) -> dict | None:
    """The `section` ("dense" / "moe") entry for shape `key` and m tokens in the table of `device`'s
    GPU, or None (no table, shape or GPU: the caller's heuristics decide). An entry that is a guess
    gives way to the same bucket's measured entry on a GPU of the same architecture."""
    tag = gpu_tag(device)
    entry = pick_entry(load_table(tag, fmt)[section].get(key, {}), m)
    if entry is not None and "ms" in entry:
        return entry
    for other in SAME_ARCHITECTURE.get(tag, ()):
        measured = pick_entry(load_table(other, fmt)[section].get(key, {}), m)
        if measured is not None and "ms" in measured:
            return measured
    return entry


def pick_entry(entries: dict, m: int):
    """The entry of the largest bucket <= m, else the smallest one."""
    if not entries:
        return None
    keys = sorted(int(b) for b in entries)
    below = [b for b in keys if b <= m]
    return entries[str(below[-1] if below else keys[0])]


# ---------------------------------------------------------------- heuristics (the shipped guesses)


def _pow2_at_most(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1)


def _split_for(tiles: int, steps: int) -> int:
    """Split K until there are about two programs per SM, keeping >= 2 K steps per split."""
    split = 1
    while tiles * split < 2 * NUM_SMS_GUESS and steps // (split * 2) >= 2:
        split *= 2
    return split


def heuristic_dense(m: int, n: int, k: int) -> Nvfp4Config:
    if m > 2048:
        return Nvfp4Config(block_m=128, block_n=128, block_kq=32, num_warps=8, num_stages=3, impl="dequant")
    bm = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    bn = 64 if m <= 64 else 128
    bkq = _pow2_at_most(min(64 if m <= 64 else 32, (k // 4) & -(k // 4)))
    tiles = -(-m // bm) * -(-n // bn)
    split = _split_for(tiles, (k // 4) // bkq) if m <= 256 else 1
    return Nvfp4Config(block_m=bm, block_n=bn, block_kq=max(16, bkq), split_k=split,
                       num_warps=4 if bn == 64 else 8, num_stages=4 if m <= 64 else 3)


DIRECT_MAX_PAIRS = 16  # (token, expert) pairs up to which the heuristic skips the alignment launch


def heuristic_moe(t: int, e: int, h: int, i: int, top_k: int) -> Nvfp4MoeConfig:
    per_expert = t * top_k / e
    # 64-token blocks from 17 to 64 pairs per expert: measured on an H100 (descent per block size) for
    # Qwen3-30B-A3B at 512 and 1,024 tokens and MiniMax-M2 at 1,024, each beating 32-token blocks
    bm = 16 if per_expert <= 16 else 64 if per_expert <= 64 else 128
    bn = 64 if bm <= 32 else 128
    warps = 4 if bn == 64 else 8
    stages = 4 if bm <= 32 else 3
    blocks = min(e, t * top_k) * max(1, round(per_expert / bm + 0.5))  # token blocks with work
    kq = lambda kdim, want: max(16, _pow2_at_most(min(want, (kdim // 4) & -(kdim // 4))))
    bkq13, bkq2 = kq(h, 64 if bm <= 32 else 32), kq(i, 64 if bm <= 32 else 32)
    split13 = _split_for(blocks * -(-i // bn), (h // 4) // bkq13) if bm <= 32 else 1
    split2 = _split_for(blocks * -(-h // bn), (i // 4) // bkq2) if bm <= 32 else 1
    common = dict(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages)
    direct = t * top_k <= DIRECT_MAX_PAIRS
    w13 = Nvfp4Config(block_kq=bkq13, split_k=split13, **common)
    if bm == 64:  # the same runs: w1|w3 in 64-row tiles on 4 warps (w2 keeps 128 rows on 8)
        w13 = Nvfp4Config(block_m=bm, block_n=64, block_kq=bkq13, num_warps=4, num_stages=3)
    if bm == 128:
        # Measured on an H100 (tune_nvfp4.py, same runs as the Triton kernels' winners) for Qwen3-30B-A3B
        # and MiniMax-M2 from 2,048 to 16,384 tokens: the Gluon wgmma MoE won every bucket but one
        # (Qwen3 at 16,384: a tie with the dequant path), always with w1|w3 in 64-row tiles on 4 warps
        # and 2 stages, and w2 in 128-row tiles; elsewhere it runs these tiles in the Triton kernels.
        return Nvfp4MoeConfig(
            block_m=bm, impl="wgmma",
            w13=Nvfp4Config(block_m=bm, block_n=64, block_kq=kq(h, 32), num_warps=4, num_stages=2),
            w2=Nvfp4Config(block_m=bm, block_n=128, block_kq=kq(i, 32), num_warps=8, num_stages=2))
    if bm == 16 and not direct:
        # Measured on an H100 for every Qwen3-30B-A3B and MiniMax-M2 expert shard at TP=1 and 2 from
        # 16 to 1,024 tokens: 32-row w1|w3 tiles on 2 warps (mma.sync, no split) beat the 64-row
        # wgmma tiles by 10-25% (a register-fed wgmma waits at once; more, smaller CTAs hide it).
        w13 = Nvfp4Config(block_m=bm, block_n=32, block_kq=kq(h, 64), split_k=1, num_warps=2, num_stages=3)
    return Nvfp4MoeConfig(block_m=bm, w13=w13, w2=Nvfp4Config(block_kq=bkq2, split_k=split2, **common), direct=direct)


# ---------------------------------------------------------------- lookups


def dense_config(m: int, n: int, k: int, device=None) -> Nvfp4Config:
    entry = table_entry(device, "nvfp4", "dense", dense_key(n, k), m)
    return Nvfp4Config.from_dict(entry) if entry else heuristic_dense(m, n, k)


def moe_config(t: int, e: int, h: int, i: int, top_k: int, device=None) -> Nvfp4MoeConfig:
    entry = table_entry(device, "nvfp4", "moe", moe_key(e, h, i, top_k), t)
    return Nvfp4MoeConfig.from_dict(entry) if entry else heuristic_moe(t, e, h, i, top_k)
