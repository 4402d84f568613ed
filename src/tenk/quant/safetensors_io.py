"""Stream tensors out of and into safetensors shards with bounded RAM.

Reading parses each shard's header and reads one tensor's bytes with a plain `readinto`, so
memory holds only the tensor asked for (no mmap of a whole 5 GB shard whose pages would then
count against the process). Only the files the index lists are read: some published folders
hold stray shards that are not part of the checkpoint.

Writing plans every output tensor's name, dtype and shape first, so each shard's header (and
every tensor's offset) is known before any data exists; tensors are then written in any order
with a seek, one at a time. The file format: 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}} padded with spaces to
8 bytes, then the raw little-endian bytes, contiguous, in offset order.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from tenk.errors import CheckpointError
from tenk.models.safetensors_io import INDEX_NAME, list_shards

DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_COPY_CHUNK = 64 << 20
_MAX_HEADER = 100 << 20  # the safetensors library's own limit


def itemsize(dtype: str) -> int:
    return DTYPES[dtype].itemsize


@dataclass(slots=True, frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype string ("BF16", "F8_E4M3", ...)
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(_MAX_HEADER, path.stat().st_size - 8):
                raise ValueError(f"its header length field says {n} bytes")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    header.pop("__metadata__", None)
    out = {}
    for name, h in header.items():
        if h["dtype"] not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {h['dtype']}, which tenk does not read")
        begin, end = h["data_offsets"]
        out[name] = TensorInfo(name, h["dtype"], tuple(h["shape"]), path, 8 + n + begin, end - begin)
    return out


def checkpoint_tensors(model_dir: str | Path) -> list[TensorInfo]:
    """Every tensor of the checkpoint, in index/file order. With an index, a tensor is taken from
    the shard the index names for it (a name present in two shards is read once)."""
    model_dir = Path(model_dir)
    shards = list_shards(model_dir)  # the model loader's rule (and checks) for which files make the checkpoint
    index = model_dir / INDEX_NAME
    weight_map = json.loads(index.read_text()).get("weight_map") if index.is_file() else None
    out: list[TensorInfo] = []
    for path in shards:
        for name, info in read_header(path).items():
            if weight_map is None or weight_map.get(name) == path.name:
                out.append(info)
    if weight_map is not None:
        found = {t.name for t in out}
        lost = [n for n in weight_map if n not in found]
        if lost:
            raise CheckpointError(f"{index} lists {len(lost)} tensors not in their shards, e.g. {lost[0]}")
    return out


class TensorReader:
    """Reads single tensors by TensorInfo, keeping one open handle per shard."""

    def __init__(self) -> None:
        self._files: dict[Path, object] = {}

    def _handle(self, path: Path):
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open(path, "rb")
        return f

    def read(self, info: TensorInfo) -> torch.Tensor:
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        buf = bytearray(info.nbytes)
        f = self._handle(info.file)
        f.seek(info.offset)
        if f.readinto(buf) != info.nbytes:
            raise CheckpointError(f"{info.file} is truncated: tensor {info.name} runs past its end")
        return torch.frombuffer(buf, dtype=torch.uint8).view(info.torch_dtype).reshape(info.shape)

    def copy_to(self, info: TensorInfo, out, out_offset: int) -> None:
        """Copy a tensor's raw bytes to an open file in chunks (for tensors passed through)."""
        f = self._handle(info.file)
        f.seek(info.offset)
        out.seek(out_offset)
        left = info.nbytes
        while left:
            chunk = f.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise CheckpointError(f"{info.file} is truncated: tensor {info.name} runs past its end")
            out.write(chunk)
            left -= len(chunk)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------- writing


@dataclass(slots=True, frozen=True)
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


@dataclass(slots=True)
class _Slot:
    shard: int
    offset: int  # absolute offset in the shard file
    spec: OutTensor
    written: bool = False


class ShardedWriter:
    """Writes a planned list of tensors into `model-0000i-of-0000n.safetensors` shards (or one
    `model.safetensors`) plus the index. `write(name, tensor)` in any order, each exactly once."""

    def __init__(self, out_dir: str | Path, plan: Iterable[OutTensor], max_shard_bytes: int = 5 << 30) -> None:
        self.out_dir = Path(out_dir)
        specs = list(plan)
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise CheckpointError(f"tensor {dup} would be written twice")
        shards: list[list[OutTensor]] = [[]]
        size = 0
        for s in specs:  # keep source order across shards so related tensors stay together
            if shards[-1] and size + s.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(s)
            size += s.nbytes
        n = len(shards)
        self.files = (
            ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self.slots: dict[str, _Slot] = {}
        self.headers: list[bytes] = []
        for i, shard in enumerate(shards):
            # Widest dtypes first, so every tensor starts at a multiple of its element size.
            shard = sorted(shard, key=lambda s: (-itemsize(s.dtype), s.name))
            header: dict = {"__metadata__": {"format": "pt"}}
            pos = 0
            for s in shard:
                header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [pos, pos + s.nbytes]}
                pos += s.nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            self.headers.append(raw)
            for s in shard:
                begin = header[s.name]["data_offsets"][0]
                self.slots[s.name] = _Slot(i, 8 + len(raw) + begin, s)
        self.total_bytes = sum(s.nbytes for s in specs)
        self._handles: dict[int, object] = {}
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _tmp(self, shard: int) -> Path:
        return self.out_dir / (self.files[shard] + ".partial")

    def _file(self, shard: int):
        f = self._handles.get(shard)
        if f is None:
            f = self._handles[shard] = open(self._tmp(shard), "wb")
            f.write(struct.pack("<Q", len(self.headers[shard])))
            f.write(self.headers[shard])
        return f

    def _slot(self, name: str) -> _Slot:
        slot = self.slots.get(name)
        if slot is None:
            raise CheckpointError(f"tensor {name} was not planned for this checkpoint")
        if slot.written:
            raise CheckpointError(f"tensor {name} was written twice")
        return slot

    def write(self, name: str, t: torch.Tensor) -> None:
        slot = self._slot(name)
        spec = slot.spec
        if DTYPE_NAMES.get(t.dtype) != spec.dtype or tuple(t.shape) != spec.shape:
            raise CheckpointError(
                f"tensor {name}: planned {spec.dtype}{list(spec.shape)}, got {t.dtype}{list(t.shape)}"
            )
        f = self._file(slot.shard)
        f.seek(slot.offset)
        if spec.nbytes:
            f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        slot.written = True

    def copy(self, name: str, reader: TensorReader, info: TensorInfo) -> None:
        """Pass a source tensor through byte for byte, in chunks."""
        slot = self._slot(name)
        if info.dtype != slot.spec.dtype or info.shape != slot.spec.shape:
            raise CheckpointError(f"tensor {name}: planned {slot.spec}, source is {info.dtype}{list(info.shape)}")
        reader.copy_to(info, self._file(slot.shard), slot.offset)
        slot.written = True

    def close(self) -> None:
        """Finish: every planned tensor must have been written; then shards get their final
        names and the index is written."""
        missing = [n for n, s in self.slots.items() if not s.written]
        if missing:
            self.abort()
            raise CheckpointError(f"{len(missing)} planned tensors were never written, e.g. {missing[0]}")
        for i in range(len(self.files)):
            self._file(i)  # a shard could only be empty of data, never absent
        for f in self._handles.values():
            f.close()
        self._handles.clear()
        for i, name in enumerate(self.files):
            os.replace(self._tmp(i), self.out_dir / name)
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {n: self.files[s.shard] for n, s in sorted(self.slots.items())},
            }
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()
        for i in range(len(self.files)):
            self._tmp(i).unlink(missing_ok=True)
