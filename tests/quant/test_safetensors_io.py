"""The streaming safetensors reader/writer that `tenk quantize` uses."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tenk.errors import CheckpointError
from tenk.quant.safetensors_io import OutTensor, ShardedWriter, TensorReader, checkpoint_tensors, read_header


def test_written_shards_read_back_with_the_safetensors_library(tmp_path):
    tensors = {
        "a.weight": torch.randn(5, 3).bfloat16(),
        "a.weight_scale_2": torch.tensor(0.25),
        "b.weight": torch.randint(0, 255, (7, 2), dtype=torch.uint8),
        "b.weight_scale": torch.randn(7, 1).to(torch.float8_e4m3fn),
        "c.bias": torch.randn(3, dtype=torch.float64),
    }
    plan = [OutTensor(n, {torch.bfloat16: "BF16", torch.float32: "F32", torch.uint8: "U8",
                          torch.float8_e4m3fn: "F8_E4M3", torch.float64: "F64"}[t.dtype], tuple(t.shape))
            for n, t in tensors.items()]
    w = ShardedWriter(tmp_path, plan, max_shard_bytes=40)
    for name in reversed(list(tensors)):  # any order
        w.write(name, tensors[name])
    w.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    for f in set(index["weight_map"].values()):
        raw = (tmp_path / f).read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        assert n % 8 == 0
        header = json.loads(raw[8 : 8 + n])
        for name, h in header.items():
            if name != "__metadata__":  # every tensor starts at a multiple of its element size
                assert (8 + n + h["data_offsets"][0]) % torch.empty(0, dtype=tensors[name].dtype).element_size() == 0
        with safe_open(str(tmp_path / f), framework="pt") as fh:
            for name in fh.keys():
                got = fh.get_tensor(name)
                assert got.dtype == tensors[name].dtype
                assert torch.equal(got.reshape(-1).view(torch.uint8), tensors[name].reshape(-1).view(torch.uint8))
    with TensorReader() as r:
        for info in checkpoint_tensors(tmp_path):
            assert torch.equal(r.read(info).reshape(-1).view(torch.uint8), tensors[info.name].reshape(-1).view(torch.uint8))


def test_writer_refuses_mistakes_and_cleans_up(tmp_path):
    w = ShardedWriter(tmp_path, [OutTensor("x", "F32", (2,)), OutTensor("y", "U8", (4,))])
    with pytest.raises(CheckpointError, match="planned F32"):
        w.write("x", torch.zeros(3))
    w.write("x", torch.zeros(2))
    with pytest.raises(CheckpointError, match="twice"):
        w.write("x", torch.zeros(2))
    with pytest.raises(CheckpointError, match="not planned"):
        w.write("z", torch.zeros(2))
    with pytest.raises(CheckpointError, match="never written"):
        w.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CheckpointError, match="twice"):
        ShardedWriter(tmp_path, [OutTensor("x", "F32", (2,))] * 2)


def test_reader_errors_are_sentences(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_header(tmp_path / "model.safetensors")
    save_file({"a": torch.zeros(4)}, tmp_path / "model.safetensors")
    save_file({"b": torch.zeros(4)}, tmp_path / "other.safetensors")
    assert [i.name for i in checkpoint_tensors(tmp_path)] == ["a"]  # model.safetensors wins
    (tmp_path / "model.safetensors").unlink()
    save_file({"c": torch.zeros(4)}, tmp_path / "third.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors.index.json"):
        checkpoint_tensors(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"b": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="lists shard .gone.safetensors., which is not in"):
        checkpoint_tensors(tmp_path)
    raw = (tmp_path / "other.safetensors").read_bytes()
    (tmp_path / "other.safetensors").write_bytes(raw[:-4])  # truncated
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"b": "other.safetensors"}}))
    with TensorReader() as r, pytest.raises(CheckpointError, match="truncated"):
        r.read(checkpoint_tensors(tmp_path)[0])
