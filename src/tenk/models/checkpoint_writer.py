"""Write a random Hugging Face checkpoint, streaming: a 60 GB model needs well under 1 GB of RAM.

Each shard is written in the safetensors format directly (8-byte little-endian header length,
JSON header, raw tensor bytes back to back): the header only needs names, dtypes and shapes,
which the specs give before any value exists, so values are generated in chunks of a few MB
(on all cores, into a fixed ring of buffers) and written straight to the file. Each chunk is
seeded by (seed, tensor name, first row), so a tensor is the same whatever the number of layers,
the shard size or the number of threads.

Init is that of a freshly built model: normal(0, 0.02) for weight matrices, ones for norms,
zeros for biases (including MiniMax-M2's router correction bias, kept in fp32).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from tenk.errors import ConfigError
from tenk.models.checkpoint_specs import TensorSpec, checkpoint_tensor_specs

if TYPE_CHECKING:  # torch is imported where values are made, so importing this module stays cheap
    import torch

INIT_STD = 0.02
CHUNK_ELEMS = 1 << 20  # values per chunk; a ring of a few chunk buffers is the writer's whole working set

# dtype name (CLI or config.json) -> (torch dtype name, safetensors dtype, bytes per element)
_DTYPES = {
    "bf16": ("bfloat16", "BF16", 2),
    "bfloat16": ("bfloat16", "BF16", 2),
    "fp16": ("float16", "F16", 2),
    "float16": ("float16", "F16", 2),
    "half": ("float16", "F16", 2),
    "fp32": ("float32", "F32", 4),
    "float32": ("float32", "F32", 4),
    "float": ("float32", "F32", 4),
    "uint8": ("uint8", "U8", 1),
    "float8_e4m3fn": ("float8_e4m3fn", "F8_E4M3", 1),
}
# Global scales of random quantized weights: NVFP4 codes average |x| ~ 2.6 times block scales
# ~1.25, FP8 unit normals: either way the dequantized weights come out near normal(0, 0.02).
GLOBAL_SCALE = {"uint8": INIT_STD / 3.0, "float8_e4m3fn": INIT_STD}

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal, as Hugging Face's max_shard_size); '512MiB' is binary."""
    if isinstance(text, int):
        size = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", text.upper())
        if not m:
            raise ConfigError(f"cannot read size {text!r}: use a number with a unit, such as 5GB, 500MB or 512MiB")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2) or ""])
    if size <= 0:
        raise ConfigError(f"size {text!r} must be positive")
    return size


def resolve_dtype(name: str) -> str:
    """Torch dtype name ('bfloat16', 'float16', 'float32') for a CLI or config.json dtype name."""
    key = name.lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"dtype {name!r} is not supported (use bf16, fp16 or fp32)")
    return _DTYPES[key][0]


@dataclass(slots=True)
class Shard:
    file: str
    specs: list[TensorSpec] = field(default_factory=list)
    nbytes: int = 0


@dataclass(slots=True)
class WrittenCheckpoint:
    path: Path
    files: list[str]  # safetensors files, in order
    num_tensors: int
    num_params: int
    total_bytes: int  # tensor data only, as model.safetensors.index.json's total_size


def _tensor_dtype(spec: TensorSpec, dtype: str) -> str:
    return spec.dtype or dtype


def tensor_nbytes(spec: TensorSpec, dtype: str) -> int:
    return spec.numel * _DTYPES[_tensor_dtype(spec, dtype)][2]


def plan_shards(specs: list[TensorSpec], dtype: str, max_shard_bytes: int) -> list[Shard]:
    """Greedy in file order, as save_pretrained does; a tensor bigger than the limit gets its own shard."""
    shards: list[Shard] = []
    cur = Shard(file="")
    for spec in specs:
        n = tensor_nbytes(spec, dtype)
        if cur.specs and cur.nbytes + n > max_shard_bytes:
            shards.append(cur)
            cur = Shard(file="")
        cur.specs.append(spec)
        cur.nbytes += n
    if cur.specs:
        shards.append(cur)
    if len(shards) == 1:
        shards[0].file = "model.safetensors"
    else:
        for i, s in enumerate(shards):
            s.file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    return shards


def tensor_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True, slots=True)
class _Chunk:
    spec: TensorSpec
    start: int  # first row (of the tensor seen as [rows, last dim])
    rows: int
    row: int  # elements per row


def _chunk_plan(spec: TensorSpec) -> list[_Chunk]:
    row = spec.shape[-1] if spec.shape else 1
    rows = spec.numel // row if row else 0
    step = max(1, CHUNK_ELEMS // max(row, 1))
    return [_Chunk(spec, s, min(step, rows - s), row) for s in range(0, rows, step)]


def _make_chunk(c: _Chunk, dtype: str, seed: int, slot: "torch.Tensor | None" = None) -> "torch.Tensor":
    """The chunk's values, written into `slot` (a reusable byte buffer) when it is big enough."""
    import torch

    out_dtype = getattr(torch, _tensor_dtype(c.spec, dtype))
    n = c.rows * c.row
    if slot is not None and n * out_dtype.itemsize <= slot.numel():
        t = slot[: n * out_dtype.itemsize].view(out_dtype).view(c.rows, c.row)
    else:
        t = torch.empty(c.rows, c.row, dtype=out_dtype)
    if c.spec.init == "ones":
        return t.fill_(1.0)
    if c.spec.init == "zeros":
        return t.zero_()
    if c.spec.init == "global_scale":
        return t.fill_(c.spec.value)
    # Each chunk has its own generator, so chunks can be made in parallel and in any order.
    gen = torch.Generator().manual_seed(tensor_seed(seed, f"{c.spec.name}@{c.start}"))
    if c.spec.init == "bytes":
        return t.random_(0, 256, generator=gen)
    if c.spec.init in ("unit_normal", "scale"):  # made in fp32, then cast (no RNG for fp8 dtypes)
        v = torch.empty(c.rows, c.row, dtype=torch.float32)
        v = v.normal_(0.0, 1.0, generator=gen) if c.spec.init == "unit_normal" else v.uniform_(0.5, 2.0, generator=gen)
        return t.copy_(v)
    return t.normal_(0.0, INIT_STD, generator=gen)


def tensor_chunks(spec: TensorSpec, dtype: str, seed: int) -> Iterator["torch.Tensor"]:
    """The tensor's values, as contiguous chunks of whole rows in file order."""
    for c in _chunk_plan(spec):
        yield _make_chunk(c, dtype, seed)


def materialize(spec: TensorSpec, dtype: str = "bfloat16", seed: int = 0) -> "torch.Tensor":
    """The whole tensor the writer writes for `spec` (for tests and small models)."""
    import torch

    parts = list(tensor_chunks(spec, resolve_dtype(dtype), seed))
    return torch.cat(parts).reshape(spec.shape)


class _ChunkMaker:
    """Makes chunks on a thread pool and hands them back in order, with at most `workers + 1`
    in flight. Chunks are generated into a fixed ring of byte buffers, so memory stays at a few
    chunks (no allocator churn either) whatever the checkpoint size."""

    def __init__(self, dtype: str, seed: int, workers: int):
        import torch

        self.dtype, self.seed, self.depth = dtype, seed, workers + 1
        self.pool = ThreadPoolExecutor(max_workers=workers)
        # job k uses slot k % len(slots): it is reused only after its chunk has been written
        self.slots = [torch.empty(CHUNK_ELEMS * 4, dtype=torch.uint8) for _ in range(self.depth + 1)]
        self.count = 0

    def __call__(self, jobs: Iterable[_Chunk]) -> Iterator["torch.Tensor"]:
        window: deque[Future] = deque()
        for job in jobs:
            slot = self.slots[self.count % len(self.slots)]
            self.count += 1
            window.append(self.pool.submit(_make_chunk, job, self.dtype, self.seed, slot))
            if len(window) >= self.depth:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def write_shard(path: Path, shard: Shard, dtype: str, maker: _ChunkMaker,
                on_bytes: Callable[[int], None] | None = None) -> None:
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in shard.specs:
        n = tensor_nbytes(spec, dtype)
        header[spec.name] = {
            "dtype": _DTYPES[_tensor_dtype(spec, dtype)][1],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    jobs = (c for spec in shard.specs for c in _chunk_plan(spec))
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for chunk in maker(jobs):
            buf = chunk.contiguous().view(-1).view(torch.uint8).numpy()
            f.write(buf.data)
            if on_bytes is not None:
                on_bytes(buf.nbytes)
            del chunk, buf  # its slot gets reused
        written = f.tell()
    expected = 8 + len(raw) + offset
    if written != expected:  # a bug here would make every loader reject the file: fail now instead
        raise RuntimeError(f"{path}: wrote {written} bytes, expected {expected}")


def _generation_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    from tenk.models.tokenizer_builder import ENDOFTEXT_ID

    eos = hf_config.get("eos_token_id")
    eos_list = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    if ENDOFTEXT_ID not in eos_list:  # plain completions end with <|endoftext|>, chats with <|im_end|>
        eos_list.append(ENDOFTEXT_ID)
    return {
        "bos_token_id": hf_config.get("bos_token_id"),
        "eos_token_id": eos_list,
        "pad_token_id": hf_config.get("pad_token_id"),
    }


def write_random_checkpoint(
    hf_config: dict[str, Any],
    out_dir: str | Path,
    *,
    dtype: str = "bf16",
    seed: int = 0,
    max_shard_size: str | int = "5GB",
    tokenizer_vocab: int | None = None,
    tokenizer_cache_dir: str | Path | None = None,
    on_bytes: Callable[[int], None] | None = None,
    specs: list[TensorSpec] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> WrittenCheckpoint:
    """Write config.json, generation_config.json, tokenizer files and random safetensors shards
    for `hf_config` into `out_dir` (created if needed; existing checkpoint files are replaced).
    `specs` replaces the config's own tensor list (quantized checkpoints: tenk.quant.random_weights),
    `extra_config` adds keys to config.json (its quantization_config)."""
    from tenk.models.tokenizer_builder import write_tokenizer

    torch_dtype = resolve_dtype(dtype)
    max_bytes = parse_size(max_shard_size)
    tok_vocab = resolve_tokenizer_vocab(hf_config, tokenizer_vocab)
    specs = specs if specs is not None else checkpoint_tensor_specs(hf_config)
    shards = plan_shards(specs, torch_dtype, max_bytes)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.safetensors"), out / "model.safetensors.index.json", out / "hf_quant_config.json"]:
        stale.unlink(missing_ok=True)  # shards of an earlier run would be read as part of this one

    cfg = dict(hf_config, torch_dtype=torch_dtype, dtype=torch_dtype, **(extra_config or {}))
    (out / "config.json").write_text(config_json_text(cfg))
    (out / "generation_config.json").write_text(json.dumps(_generation_config(cfg), indent=2) + "\n")
    write_tokenizer(out, tok_vocab, int(cfg.get("max_position_embeddings") or 4096), tokenizer_cache_dir)

    # Generating normal values is the slow part (one core makes ~150 MB/s): spread chunks over cores.
    maker = _ChunkMaker(torch_dtype, seed, workers=max(1, min(8, os.cpu_count() or 1)))
    try:
        for shard in shards:
            write_shard(out / shard.file, shard, torch_dtype, maker, on_bytes)
    finally:
        maker.close()
    total = sum(s.nbytes for s in shards)
    num_params = sum(s.numel for s in specs)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total, "total_parameters": num_params},
            "weight_map": {spec.name: s.file for s in shards for spec in s.specs},
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return WrittenCheckpoint(out, [s.file for s in shards], len(specs), num_params, total)


def config_json_text(cfg: dict[str, Any]) -> str:
    """config.json as tenk writes it: with the installed transformers' version, as Hugging Face
    checkpoints carry it (transformers 5 warns about a Mistral tokenizer regex for configs
    without one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        cfg = {**cfg, "transformers_version": cfg.get("transformers_version") or version("transformers")}
    except PackageNotFoundError:
        pass
    return json.dumps(cfg, indent=2) + "\n"


def resolve_tokenizer_vocab(hf_config: dict[str, Any], tokenizer_vocab: int | None) -> int:
    """The tokenizer's size: as asked, else the model's vocab (every id the model can sample
    decodes to text); never above it."""
    vocab = int(hf_config["vocab_size"])
    tok_vocab = tokenizer_vocab if tokenizer_vocab is not None else vocab
    if tok_vocab > vocab:
        raise ConfigError(
            f"tokenizer vocab {tok_vocab} is larger than the model's vocab_size {vocab}: "
            "the model could not embed every token"
        )
    return tok_vocab


def checkpoint_nbytes(hf_config: dict[str, Any], dtype: str = "bf16") -> int:
    """Bytes of tensor data the checkpoint will hold (for progress bars and disk checks)."""
    torch_dtype = resolve_dtype(dtype)
    return sum(tensor_nbytes(s, torch_dtype) for s in checkpoint_tensor_specs(hf_config))
