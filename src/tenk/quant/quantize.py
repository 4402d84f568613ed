"""`tenk quantize`: a bf16 (or FP8) checkpoint -> a ModelOpt NVFP4 / FP8 checkpoint, streamed.

One tensor is in memory at a time (quantized in row chunks), output shards are planned up
front and written with seeks (tenk.quant.safetensors_io), so a 60 GB source converts in a few
GB of RAM. The output loads in tenk and in engines that read ModelOpt checkpoints:

    hf_quant_config.json                {"producer", "quantization": {quant_algo, group_size, exclude_modules}}
    config.json quantization_config     {"quant_method": "modelopt", quant_algo, group_size, ignore, ...}
    NVFP4 module X:   X.weight U8 [N, K/2], X.weight_scale F8_E4M3 [N, K/16], X.weight_scale_2 F32 []
    FP8 module X:     X.weight F8_E4M3 [N, K], X.weight_scale F32 []
    FP8 block (--fp8-scheme block, the MiniMax-M2 / DeepSeek layout, `quant_method: fp8`):
                      X.weight F8_E4M3 [N, K], X.weight_scale_inv F32 [N/128, K/128]

Every tensor gets its own global scale: an expert's w1 and w3 (and q, k, v) are not forced to
share one. Router gates, embeddings, lm_head and norms stay in the source precision; an FP8
source (the official MiniMax-M2 weights) is dequantized first.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tenk.errors import CheckpointError, ConfigError
from tenk.quant import fp8 as fp8_fmt
from tenk.quant import nvfp4 as nvfp4_fmt
from tenk.quant.formats import FP8, NVFP4, QuantConfig, detect_quant_config, module_matches
from tenk.quant.safetensors_io import DTYPES, INDEX_NAME, OutTensor, ShardedWriter, TensorInfo, TensorReader, checkpoint_tensors

TARGETS = ("experts", "all-linear")
FP8_SCHEMES = ("tensor", "block")
_EXPERT_RE = re.compile(r"\.experts\.\d+\.")
_CHUNK_ELEMENTS = 1 << 20  # bounds the fp32 temporaries of one quantization step (~4 MB each)
# Files that are the weights (rewritten) or describe them (regenerated); everything else is copied.
_NOT_COPIED = {"config.json", "hf_quant_config.json", INDEX_NAME}
_SCALE_PARAMS = {"weight_scale", "weight_scale_inv", "weight_scale_2", "input_scale", "k_scale", "v_scale"}


@dataclass(slots=True)
class QuantizeOptions:
    format: str  # "nvfp4" | "fp8"
    targets: str = "experts"  # "experts": routed experts only | "all-linear": every linear but lm_head
    exclude: tuple[str, ...] = ()  # extra module patterns kept in high precision (fnmatch / exact / parent)
    fp8_scheme: str = "tensor"  # FP8 only: "tensor" (ModelOpt FP8) | "block" (128x128, weight_scale_inv)
    max_shard_bytes: int = 5 << 30
    calib: Path | None = None  # JSONL prompts for activation scales (not implemented: rejected)
    device: str = "cpu"  # where the math runs ("cuda" is ~100x faster on a 200B model); results are identical

    def __post_init__(self) -> None:
        if self.format not in (NVFP4, FP8):
            raise ConfigError(f"--format must be nvfp4 or fp8, got {self.format!r}")
        if self.targets not in TARGETS:
            raise ConfigError(f"--targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")
        if self.fp8_scheme not in FP8_SCHEMES:
            raise ConfigError(f"--fp8-scheme must be one of {', '.join(FP8_SCHEMES)}, got {self.fp8_scheme!r}")
        if self.format != FP8 and self.fp8_scheme != "tensor":
            raise ConfigError("--fp8-scheme only applies to --format fp8")
        if self.calib is not None:
            raise ConfigError(
                "--calib (activation scales) is not implemented yet: tenk writes weight scales only, "
                "which is what W4A16/W8A16 kernels (tenk on Hopper, Marlin) need; drop --calib"
            )
        if self.max_shard_bytes <= 0:
            raise ConfigError("the shard size must be positive")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but this machine has no CUDA GPU")
        if not self.device.startswith(("cpu", "cuda")):
            raise ConfigError(f"--device must be cpu, cuda or auto, got {self.device!r}")
        self.exclude = tuple(self.exclude)


@dataclass(slots=True)
class QuantizeSummary:
    quantized: list[str] = field(default_factory=list)  # modules written in the new format
    kept: list[str] = field(default_factory=list)  # modules with a 2-D weight left in high precision
    exclude_modules: list[str] = field(default_factory=list)  # what the config's exclude list says
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class _Job:
    kind: str  # "copy" | "quantize" | "dequantize"
    name: str  # source tensor name (the weight, for quantize / dequantize)
    info: TensorInfo
    scale: TensorInfo | None = None  # the FP8 source scale of a quantized source weight
    outputs: list[OutTensor] = field(default_factory=list)


def default_excluded(module: str) -> bool:
    """Modules never quantized: lm_head, embeddings, MoE routers (`mlp.gate`,
    `block_sparse_moe.gate`, `shared_expert_gate`)."""
    tail = module.rsplit(".", 1)[-1]
    return tail == "lm_head" or "embed" in tail or tail == "gate" or tail.endswith("_gate") or tail == "router"


def is_expert(module: str) -> bool:
    return _EXPERT_RE.search(module + ".") is not None


def choose_target(module: str, shape: tuple[int, ...], opts: QuantizeOptions) -> bool:
    if len(shape) != 2 or default_excluded(module):
        return False
    if any(module_matches(module, p) for p in opts.exclude):
        return False
    if opts.targets == "experts" and not is_expert(module):
        return False
    if opts.format == NVFP4 and shape[1] % nvfp4_fmt.GROUP_SIZE:
        return False  # K must split into 16-wide blocks; such a layer stays high precision
    return True


def _quantized_outputs(module: str, n: int, k: int, opts: QuantizeOptions) -> list[OutTensor]:
    if opts.format == NVFP4:
        return [
            OutTensor(f"{module}.weight", "U8", (n, k // 2)),
            OutTensor(f"{module}.weight_scale", "F8_E4M3", (n, k // nvfp4_fmt.GROUP_SIZE)),
            OutTensor(f"{module}.weight_scale_2", "F32", ()),
        ]
    if opts.fp8_scheme == "block":
        bn, bk = fp8_fmt.FP8_BLOCK
        return [
            OutTensor(f"{module}.weight", "F8_E4M3", (n, k)),
            OutTensor(f"{module}.weight_scale_inv", "F32", (math.ceil(n / bn), math.ceil(k / bk))),
        ]
    return [OutTensor(f"{module}.weight", "F8_E4M3", (n, k)), OutTensor(f"{module}.weight_scale", "F32", ())]


def quantize_weight(w: torch.Tensor, opts: QuantizeOptions) -> list[torch.Tensor]:
    """One 2-D weight -> its output tensors in `_quantized_outputs` order. NVFP4 and per-tensor
    FP8 quantize in row chunks against the whole tensor's amax, which gives exactly what the
    one-shot functions give while holding only a chunk's fp32 temporaries."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, w.shape[1]))
    if opts.format == FP8 and opts.fp8_scheme == "block":
        bn = fp8_fmt.FP8_BLOCK[0]  # whole block rows per chunk: each block's amax stays its own
        parts = [fp8_fmt.quantize_fp8_block(c) for c in w.split(max(bn, rows // bn * bn))]
        return [torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])]
    if not bool(torch.isfinite(w).all()):
        raise ValueError("the weight holds inf or NaN values")
    amax = w.abs().amax().float()
    chunks = w.split(rows)
    if opts.format == NVFP4:
        g = nvfp4_fmt.global_scale_from_amax(amax)
        parts = [nvfp4_fmt.quantize_nvfp4(c, g) for c in chunks]
        return [torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), g]
    scale = fp8_fmt.scale_from_amax(amax)
    q = torch.cat([fp8_fmt.to_e4m3(c.float() / scale) for c in chunks])
    return [q, scale]


def _source_weight(reader: TensorReader, job: _Job, src_q: QuantConfig | None) -> torch.Tensor:
    """The weight as float (bf16/fp16/fp32 as stored, FP8 dequantized with its scale)."""
    w = reader.read(job.info)
    if w.dtype != torch.float8_e4m3fn:
        return w
    if job.scale is None:
        raise CheckpointError(f"{job.name} is FP8 but the checkpoint has no scale for it")
    s = reader.read(job.scale).float()
    if s.numel() == 1:
        return fp8_fmt.dequantize_fp8_per_tensor(w, s.reshape(()))
    if s.ndim == 1 and s.numel() == w.shape[0]:  # per output channel
        return w.float() * s.unsqueeze(1)
    if s.ndim == 4:  # ModelOpt FP8_PB_WO: [N/128, 1, K/128, 1]
        s = s.reshape(s.shape[0], s.shape[2])
    block = (src_q.weight_block_size if src_q else None) or fp8_fmt.FP8_BLOCK
    return fp8_fmt.dequantize_fp8_block(w, s, tuple(block))


def _plan(src: Path, opts: QuantizeOptions, src_q: QuantConfig | None, out_dtype: str) -> tuple[list[_Job], QuantizeSummary]:
    infos = checkpoint_tensors(src)
    by_name = {i.name: i for i in infos}
    summary = QuantizeSummary(bytes_in=sum(i.nbytes for i in infos))
    jobs: list[_Job] = []
    for info in infos:
        module, _, param = info.name.rpartition(".")
        weight = by_name.get(f"{module}.weight")
        source_quantized = weight is not None and weight.dtype == "F8_E4M3"
        if param in ("weight_packed", "weight_global_scale", "input_global_scale") or (
            weight is not None and weight.dtype == "U8" and param == "weight"
        ):
            raise ConfigError(f"{src} is already 4-bit ({info.name}); quantize from its bf16 or FP8 original")
        if source_quantized and param in _SCALE_PARAMS:
            continue  # consumed with the weight it scales
        if src_q is not None and param in ("input_scale", "k_scale", "v_scale"):
            continue  # activation scales of the source's own scheme do not apply to the output
        if param != "weight" or len(info.shape) != 2:
            jobs.append(_Job("copy", info.name, info, outputs=[OutTensor(info.name, info.dtype, info.shape)]))
            continue
        scale = by_name.get(f"{module}.weight_scale_inv") or by_name.get(f"{module}.weight_scale")
        n, k = info.shape
        if choose_target(module, info.shape, opts):
            summary.quantized.append(module)
            jobs.append(_Job("quantize", info.name, info, scale, _quantized_outputs(module, n, k, opts)))
        elif source_quantized:
            summary.kept.append(module)
            jobs.append(_Job("dequantize", info.name, info, scale, [OutTensor(info.name, out_dtype, info.shape)]))
        else:
            summary.kept.append(module)
            jobs.append(_Job("copy", info.name, info, outputs=[OutTensor(info.name, info.dtype, info.shape)]))
    if not summary.quantized:
        what = "routed experts (.experts.N.)" if opts.targets == "experts" else "linear layers"
        raise ConfigError(f"nothing to quantize: no {what} in {src} matched (try --targets all-linear?)")
    return jobs, summary


def compress_exclude(excluded: list[str], quantized: list[str]) -> list[str]:
    """Shorten the exclude list: `model.layers.7.self_attn.q_proj` -> `model.layers.*.self_attn.q_proj`
    wherever the wildcard covers no quantized module; the rest stay literal."""
    import fnmatch

    out: list[str] = []
    for name in excluded:
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name)
        if pattern != name and any(fnmatch.fnmatchcase(q, pattern) for q in quantized):
            pattern = name
        if pattern not in out:
            out.append(pattern)
    return out


def _quant_configs(opts: QuantizeOptions, exclude: list[str]) -> tuple[dict | None, dict]:
    """(hf_quant_config.json contents or None, config.json quantization_config)."""
    from tenk.version import __version__

    producer = {"name": "tenk", "version": __version__}
    if opts.format == FP8 and opts.fp8_scheme == "block":
        bn, bk = fp8_fmt.FP8_BLOCK
        return None, {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [bn, bk],
            "modules_to_not_convert": exclude,
            "ignored_layers": exclude,
        }
    algo = "NVFP4" if opts.format == NVFP4 else "FP8"
    quantization: dict = {"quant_algo": algo, "kv_cache_quant_algo": None}
    weights: dict = {"dynamic": False, "num_bits": 8, "type": "float"}
    if opts.format == NVFP4:
        quantization["group_size"] = nvfp4_fmt.GROUP_SIZE
        weights = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": nvfp4_fmt.GROUP_SIZE}
    quantization["exclude_modules"] = exclude
    hf_quant = {"producer": producer, "quantization": quantization}
    config_json = {
        "quant_method": "modelopt",
        "quant_algo": algo,
        **({"group_size": nvfp4_fmt.GROUP_SIZE} if opts.format == NVFP4 else {}),
        "ignore": exclude,
        "exclude_modules": exclude,
        "config_groups": {"group_0": {"weights": weights, "targets": ["Linear"]}},
        "kv_cache_scheme": None,
        "producer": producer,
        "quant_library": "modelopt",
    }
    return hf_quant, config_json


def _check_dirs(src: Path, dst: Path) -> dict:
    if not src.is_dir():
        raise ConfigError(f"source directory {str(src)!r} does not exist")
    if not (src / "config.json").is_file():
        raise ConfigError(f"{src} has no config.json: it is not a Hugging Face model directory")
    if not any(src.glob("*.safetensors")):
        raise ConfigError(f"{src} has no *.safetensors weights (tenk reads safetensors checkpoints only)")
    if dst.resolve() == src.resolve():
        raise ConfigError("the output directory must differ from the source directory")
    if dst.exists() and (any(dst.glob("*.safetensors")) or (dst / "config.json").exists()):
        raise ConfigError(f"{dst} already holds a checkpoint; choose a new or empty directory")
    try:
        return json.loads((src / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{src / 'config.json'} is not valid JSON: {exc}") from None


def quantize_checkpoint(
    src: str | Path,
    dst: str | Path,
    opts: QuantizeOptions,
    on_progress: Callable[[int, int, str], None] | None = None,  # (bytes done, bytes total, tensor)
) -> QuantizeSummary:
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    config = _check_dirs(src, dst)
    src_q = detect_quant_config(src)
    if src_q is not None and src_q.format == NVFP4:
        raise ConfigError(f"{src} is already NVFP4; quantize from its bf16 or FP8 original")
    # Layers dequantized from an FP8 source are written in the model's own dtype.
    out_dtype = {"float16": "F16", "float32": "F32"}.get(str(config.get("torch_dtype") or config.get("dtype")), "BF16")
    jobs, summary = _plan(src, opts, src_q, out_dtype)

    writer = ShardedWriter(dst, [o for j in jobs for o in j.outputs], opts.max_shard_bytes)
    done = 0
    try:
        with TensorReader() as reader:
            for job in jobs:
                if job.kind == "copy":
                    writer.copy(job.outputs[0].name, reader, job.info)
                else:
                    w = _source_weight(reader, job, src_q)
                    if job.kind == "quantize":
                        try:
                            tensors = [t.cpu() for t in quantize_weight(w.to(opts.device), opts)]
                        except ValueError as exc:
                            raise CheckpointError(f"{job.name}: {exc}") from None
                    else:
                        tensors = [w.to(DTYPES[out_dtype])]
                    for spec, t in zip(job.outputs, tensors):
                        writer.write(spec.name, t)
                    del w, tensors
                done += job.info.nbytes
                if on_progress is not None:
                    on_progress(done, summary.bytes_in, job.name)
        writer.close()
    except BaseException:
        writer.abort()
        raise

    excluded = summary.kept + (["lm_head"] if not any(k.endswith("lm_head") for k in summary.kept) else [])
    summary.exclude_modules = compress_exclude(excluded, summary.quantized)
    hf_quant, qc = _quant_configs(opts, summary.exclude_modules)
    config = {k: v for k, v in config.items() if k != "quantization_config"}
    config["quantization_config"] = qc
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if hf_quant is not None:
        (dst / "hf_quant_config.json").write_text(json.dumps(hf_quant, indent=2) + "\n")
    for f in src.iterdir():  # tokenizer, generation config, chat template, remote code
        if f.is_file() and f.name not in _NOT_COPIED and not f.name.endswith((".safetensors", ".bin", ".pt", ".pth")):
            shutil.copy2(f, dst / f.name)
    summary.bytes_out = writer.total_bytes
    summary.seconds = time.perf_counter() - t0
    return summary
