"""`tenk quantize` streams: its peak memory grows by about one tensor, not by the checkpoint."""

import json
import subprocess
import sys

import torch
from safetensors.torch import save_file

CHILD = """
import resource, sys, torch
from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint, quantize_weight
quantize_weight(torch.randn(256, 4096).bfloat16(), QuantizeOptions(format="nvfp4"))  # warm up torch
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = quantize_checkpoint(sys.argv[1], sys.argv[2], QuantizeOptions(format="nvfp4", max_shard_bytes=100 << 20))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base * 1024, peak * 1024, s.bytes_in, s.bytes_out, len(s.quantized))
"""


def test_peak_memory_is_bounded_by_the_largest_tensor(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    # 96 MB copied through (zeros: its content does not matter) + 4 x 2 MB experts quantized, in two shards
    shard1 = {"model.embed_tokens.weight": torch.zeros(12288, 4096, dtype=torch.bfloat16)}
    shard2 = {
        f"model.layers.0.mlp.experts.{e}.down_proj.weight": torch.randn(512, 2048, generator=g).bfloat16()
        for e in range(4)
    }
    save_file(shard1, src / "model-00001-of-00002.safetensors")
    save_file(shard2, src / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in shard1}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in shard2}
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (src / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "torch_dtype": "bfloat16"}))
    del shard1, shard2

    out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    base, peak, bytes_in, bytes_out, n = map(int, out.stdout.split())
    assert n == 4 and bytes_in == (12288 * 4096 + 4 * 512 * 2048) * 2
    growth = peak - base
    # the largest tensor read whole is a 2 MB expert (the 96 MB one is copied in 64 MB chunks);
    # allow for the chunk buffer, one expert and its temporaries, and allocator slack
    assert growth < 100 << 20, f"peak grew by {growth / 2**20:.0f} MiB while converting {bytes_in / 2**20:.0f} MiB"
