"""The memory numbers `tenk demo` puts in a result's layout block, checked against the files."""

from __future__ import annotations

import json
import shutil

import pytest

from tenk.models.checkpoint_writer import write_random_checkpoint
from tenk.models.presets import get_preset
from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint
from tenk.quant.safetensors_io import checkpoint_tensors
from tenk.report.layout import kv_bytes, layout_block, weights_bytes


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    write_random_checkpoint(get_preset("tiny-moe"), root / "bf16", dtype="bf16")
    quantize_checkpoint(root / "bf16", root / "nvfp4", QuantizeOptions(format="nvfp4"))
    return root / "bf16", root / "nvfp4"


def test_weights_as_the_engine_holds_them(checkpoints, tmp_path):
    bf16, nvfp4 = checkpoints
    stored = sum(t.nbytes for t in checkpoint_tensors(bf16))
    assert weights_bytes(bf16, "bfloat16") == stored
    assert weights_bytes(bf16, "float32") == 2 * stored  # CPU computes in fp32
    packed = [t for t in checkpoint_tensors(nvfp4) if t.dtype == "U8"]
    assert packed and weights_bytes(nvfp4, "bfloat16") < stored  # 4-bit experts are smaller
    # a dummy-weights folder (config + tokenizer, no safetensors) is sized from the tensor list
    dummy = tmp_path / "dummy"
    dummy.mkdir()
    shutil.copy(bf16 / "config.json", dummy / "config.json")
    assert weights_bytes(dummy, "bfloat16") == stored
    # an NVFP4 config without files (GPU demo, dummy weights): experts at the size quantize writes
    shutil.copy(nvfp4 / "config.json", dummy / "config.json")
    assert weights_bytes(dummy, "bfloat16") == weights_bytes(nvfp4, "bfloat16")


def test_layout_block_kv_and_reserve(checkpoints):
    bf16, _ = checkpoints
    cfg = json.loads((bf16 / "config.json").read_text())
    # K and V, layers x block x kv heads x head_dim x 4 bytes (fp32), 100 blocks
    per_block = 2 * cfg["num_hidden_layers"] * 16 * cfg["num_key_value_heads"] * cfg["head_dim"] * 4
    assert kv_bytes(bf16, 100, 16, "float32") == 100 * per_block
    cpu = layout_block(model_dir=bf16, dtype="float32", block_size=16, tp=1, dp=2, quantization="BF16",
                       info={"num_kv_blocks": 100, "kv_capacity_tokens": 1600, "device": "cpu"})  # fmt: skip
    assert cpu["kv_bytes_per_gpu"] == 100 * per_block and cpu["kv_tokens"] == 1600 and cpu["dp"] == 2
    assert "gpu_memory_bytes" not in cpu and "reserve_bytes_per_gpu" not in cpu
    w = weights_bytes(bf16, "bfloat16")
    gpu = layout_block(model_dir=bf16, dtype="bfloat16", block_size=16, tp=1, dp=1, quantization="BF16",
                       info={"num_kv_blocks": 100, "kv_capacity_tokens": 1600, "device": "cuda",
                             "gpu_memory_bytes": 80 << 30, "engine_bytes": (2 << 30), "gpu_name": "H100"})  # fmt: skip
    assert gpu["reserve_bytes_per_gpu"] == (2 << 30) - w - 100 * per_block // 2
    assert gpu["gpus"] == 1 and gpu["gpu_name"] == "H100"
