"""Broken checkpoints give one clear line naming the tensor or field."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tenk.errors import CheckpointError, ConfigError
from tenk.models.config import ModelConfig
from tenk.models.loader import load_model

from .hf_tiny import save_tiny


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("good")
    save_tiny("qwen3_moe", path)
    return path


def _copy(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _load(path):
    return load_model(ModelConfig.from_dir(path), str(path), "cpu", torch.float32)


def _edit_tensors(path, fn):
    f = path / "model.safetensors"
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def test_good_checkpoint_loads(good_dir):
    _load(good_dir)


def test_missing_tensor(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)
    _edit_tensors(path, lambda t: t.pop("model.layers.0.mlp.experts.3.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.experts\.w13_weight \(shard w3, expert 3\)"):
        _load(path)


def test_missing_dense_tensor(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)
    _edit_tensors(path, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight"):
        _load(path)


def test_wrong_shape(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)

    def bad(t):
        t["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(16, 64)

    _edit_tensors(path, bad)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.self_attn\.k_proj\.weight': shape \(16, 64\)"):
        _load(path)


def test_wrong_dtype(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)

    def bad(t):
        t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"].to(torch.int32)

    _edit_tensors(path, bad)
    with pytest.raises(CheckpointError, match=r"'model\.embed_tokens\.weight' has dtype torch\.int32"):
        _load(path)


def test_truncated_file(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors|truncated"):
        _load(path)


def test_unknown_model_type(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "gpt_unicorn"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"model_type 'gpt_unicorn' is not supported"):
        _load(path)


def test_missing_config_field(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    del cfg["hidden_size"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"'hidden_size' is missing"):
        _load(path)


def test_index_lists_only_its_shards(good_dir, tmp_path):
    """A stray shard beside an index is never opened; a shard the index names must exist."""
    path = _copy(good_dir, tmp_path)
    tensors = load_file(path / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    save_file({k: tensors[k] for k in names[:half]}, path / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file({k: tensors[k] for k in names[half:]}, path / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    (path / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(names)}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / "stray-shard.safetensors").write_bytes(b"not a safetensors file")
    _load(path)
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"lists shard 'model-00002-of-00002\.safetensors'"):
        _load(path)


def test_cli_prints_one_line_without_traceback(good_dir, tmp_path):
    """`tenk generate` on a broken checkpoint: exit 1, one error line naming the tensor."""
    import subprocess
    import sys

    path = _copy(good_dir, tmp_path)
    _edit_tensors(path, lambda t: t.pop("model.layers.1.self_attn.o_proj.weight"))
    proc = subprocess.run(
        [sys.executable, "-m", "tenk.cli.main", "generate", str(path), "-p", "hi", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.layers.1.self_attn.o_proj.weight" in errors[0], proc.stderr
