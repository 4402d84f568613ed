"""Convert a ModelOpt NVFP4 checkpoint (what `tenk quantize` writes) to compressed-tensors'
`nvfp4-pack-quantized` layout, streamed: same packed codes and E4M3 block scales, global
scales inverted (`weight_global_scale = 1 / weight_scale_2`, shape [1]), config.json's
quantization_config in compressed-tensors' schema. For engines and tools that read only that
format (llm-compressor, the compressed-tensors library, vLLM's compressed-tensors path).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tenk.errors import ConfigError
from tenk.quant.convert import compressed_tensors_config, ct_name, to_compressed_tensors
from tenk.quant.formats import MODELOPT, NVFP4, detect_quant_config
from tenk.quant.safetensors_io import INDEX_NAME, OutTensor, ShardedWriter, TensorReader, checkpoint_tensors


def export_compressed_tensors(src: str | Path, dst: str | Path, max_shard_bytes: int = 5 << 30) -> None:
    src, dst = Path(src), Path(dst)
    qcfg = detect_quant_config(src)
    if qcfg is None or qcfg.format != NVFP4 or qcfg.checkpoint_format != MODELOPT:
        raise ConfigError(f"{src} is not a ModelOpt NVFP4 checkpoint")
    infos = checkpoint_tensors(src)
    packed = {i.name.rpartition(".")[0] for i in infos if i.name.endswith(".weight") and i.dtype == "U8"}
    plan = []
    for info in infos:
        name = ct_name(info.name, info.name.rpartition(".")[0] in packed)
        plan.append((info, OutTensor(name, info.dtype, (1,) if name.endswith("_global_scale") else info.shape)))
    writer = ShardedWriter(dst, [o for _, o in plan], max_shard_bytes)
    try:
        with TensorReader() as reader:
            for info, out in plan:
                module = info.name.rpartition(".")[0]
                name, t = to_compressed_tensors(info.name, reader.read(info), module in packed)
                writer.write(name, t)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    has_inputs = any(i.name.endswith(".input_scale") for i in infos)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = compressed_tensors_config(qcfg, has_inputs)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in src.iterdir():
        if f.is_file() and f.name not in ("config.json", "hf_quant_config.json", INDEX_NAME) and not f.name.endswith(".safetensors"):
            shutil.copy2(f, dst / f.name)
