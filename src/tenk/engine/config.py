"""EngineConfig: every knob of one engine replica in one slotted dataclass that checks itself.

Values a user can get wrong raise ConfigError with a sentence; values that depend on the model
(`max_model_len`, `max_num_batched_tokens`, dtype and device "auto") are resolved here once, from
the checkpoint's config.json, so the rest of the engine reads plain numbers."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from tenk.engine.kv_cache import kv_cache_torch_dtype
from tenk.engine.graph_modes import check_cudagraph_mode
from tenk.engine.kv_cache_dtype import check_kv_cache_dtype
from tenk.errors import ConfigError
from tenk.models.config import ModelConfig

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192


@dataclass(slots=True)
class EngineConfig:
    model: str
    tokenizer: str | None = None  # defaults to the model directory
    dtype: str = "auto"  # auto: the checkpoint's dtype on GPU (fp32 -> bf16), float32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    load_format: str = "auto"  # "auto" reads the safetensors; "dummy" makes random weights
    quantization: str = "auto"  # auto: the checkpoint's; nvfp4 | nvfp4-all | fp8 | none (see tenk.quant.select)
    max_num_seqs: int = 256
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    max_num_batched_tokens: int | None = None  # tokens per step; None: max(8192, max_num_seqs)
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    num_kv_blocks: int | None = None  # fixes the KV pool size (tests, CPU); None: sized from memory
    kv_cache_memory_bytes: int | None = None  # CPU: bytes for the KV pool; None: see kv_cache.py
    kv_cache_dtype: str = "auto"  # auto: the model's dtype; fp8 | fp8_e4m3: e4m3, 1 byte per element
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # True: no CUDA graphs
    max_cudagraph_capture_size: int = 512  # decode batches up to this run as decode CUDA graphs
    # full: every other step (prefill chunks, mixed, larger decode batches) replays a graph per token
    # bucket too (engine.mixed_graphs); full_decode_only: those run eagerly
    cudagraph_mode: str = "full"
    async_scheduling: bool = True  # schedule step N+1 while step N runs; False: one step at a time
    tensor_parallel_size: int = 1  # ranks (GPUs; processes on CPU): rank r on cuda:device_index + r
    enable_expert_parallel: bool = False  # TP > 1: split the experts across ranks instead of each expert's FFN
    seed: int = 0
    # Resolved in __post_init__.
    model_config: ModelConfig = field(init=False, repr=False)
    torch_device: torch.device = field(init=False, repr=False)
    torch_dtype: torch.dtype = field(init=False, repr=False)
    kv_cache_torch_dtype: torch.dtype = field(init=False, repr=False)
    max_model_len_explicit: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from tenk.models.source import resolve_model_dir
        from tenk.quant.select import CHOICES

        self.model = str(resolve_model_dir(str(self.model), self.load_format))
        if str(self.quantization).lower() not in CHOICES:
            raise ConfigError(f"quantization must be one of {', '.join(CHOICES)}, got {self.quantization!r}")
        self.tokenizer = str(self.tokenizer or self.model)
        self.model_config = ModelConfig.from_dir(self.model)
        for name in ("max_num_seqs", "block_size", "tensor_parallel_size", "max_cudagraph_capture_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.cudagraph_mode = check_cudagraph_mode(self.cudagraph_mode)
        if self.block_size % 8 and self.block_size not in (1, 2, 4):
            raise ConfigError(f"block_size must be a power of two or a multiple of 8, got {self.block_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes < 1:
            raise ConfigError(f"kv_cache_memory_bytes must be >= 1, got {self.kv_cache_memory_bytes}")
        self.kv_cache_dtype = check_kv_cache_dtype(self.kv_cache_dtype)
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ConfigError(f"load_format must be 'auto', 'safetensors' or 'dummy', got {self.load_format!r}")

        model_max = self.model_config.max_position_embeddings
        self.max_model_len_explicit = self.max_model_len is not None
        if self.max_model_len is None:
            self.max_model_len = model_max
        if not isinstance(self.max_model_len, int) or self.max_model_len < 1:
            raise ConfigError(f"max_model_len must be a positive integer, got {self.max_model_len!r}")
        if self.max_model_len > model_max:
            raise ConfigError(
                f"max_model_len {self.max_model_len} is longer than the model's max_position_embeddings {model_max}"
            )
        if self.max_num_batched_tokens is None:
            self.max_num_batched_tokens = max(DEFAULT_MAX_NUM_BATCHED_TOKENS, self.max_num_seqs)
        if not isinstance(self.max_num_batched_tokens, int) or self.max_num_batched_tokens < 1:
            raise ConfigError(f"max_num_batched_tokens must be a positive integer, got {self.max_num_batched_tokens!r}")

        self.torch_device = _resolve_device(self.device)
        tp = self.tensor_parallel_size
        if self.torch_device.type == "cuda" and self.torch_device.index + tp > torch.cuda.device_count():
            raise ConfigError(
                f"tensor_parallel_size {tp} needs GPUs {self.torch_device.index}..{self.torch_device.index + tp - 1}, "
                f"but {torch.cuda.device_count()} are visible"
            )
        self.torch_dtype = _resolve_dtype(self.dtype, self.model_config, self.torch_device)
        self.kv_cache_torch_dtype = kv_cache_torch_dtype(self.kv_cache_dtype, self.torch_dtype)
        if self.kv_cache_dtype != "auto" and self.torch_device.type == "cuda":
            # Triton converts e4m3 in hardware from Ada / Hopper on; older GPUs cannot run the kernels.
            cap = torch.cuda.get_device_capability(self.torch_device)
            if cap < (8, 9):
                raise ConfigError(
                    f"kv_cache_dtype {self.kv_cache_dtype} needs a GPU of compute capability 8.9 or newer, "
                    f"this one is {cap[0]}.{cap[1]}: use kv_cache_dtype auto"
                )

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls) if f.init}


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a device torch knows (try 'cpu' or 'cuda')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is visible")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported (cpu or cuda)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _resolve_dtype(dtype: str, model_config: ModelConfig, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cpu":
            return torch.float32  # CPU bf16 matmuls are slow on most hosts; tiny models anyway
        ckpt = _DTYPES.get(model_config.torch_dtype, torch.bfloat16)
        return torch.bfloat16 if ckpt == torch.float32 else ckpt
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return _DTYPES[dtype]
