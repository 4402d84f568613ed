"""Reading a Hugging Face safetensors directory tensor by tensor, memory-mapped.

Only the shards that `model.safetensors.index.json` lists are opened (published folders may
hold stray shards); a directory without an index must hold exactly one `*.safetensors`
file (or `model.safetensors`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from tenk.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"


def list_shards(model_dir: str | Path) -> list[Path]:
    model_dir = Path(model_dir)
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index ({exc})") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shard {missing[0]!r}, which is not in {model_dir}")
        return [model_dir / s for s in shards]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(model_dir.glob("*.safetensors"))
    if len(files) == 1:
        return files
    if not files:
        raise CheckpointError(f"{model_dir} holds no *.safetensors weights")
    raise CheckpointError(f"{model_dir} holds {len(files)} *.safetensors files but no {INDEX_NAME} saying which to load")


def iter_tensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one at a time; each tensor is a view of the memory-mapped file."""
    for shard in list_shards(model_dir):
        try:
            f = safe_open(str(shard), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types for broken headers
            raise CheckpointError(f"cannot read {shard.name}: {exc} (is the file truncated or not safetensors?)") from None
        with f:
            for name in f.keys():
                try:
                    yield name, f.get_tensor(name)
                except Exception as exc:
                    raise CheckpointError(f"cannot read tensor {name!r} from {shard.name}: {exc} (truncated file?)") from None
