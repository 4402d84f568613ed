"""Enumerate (quantization, TP, DP) layouts, size each one's memory and estimate its decode
throughput, then rank them.

    source = load_model_source("minimax-m2")
    plan = make_plan(source, PlanConfig(gpus=4, gpu=GpuSpec(memory_bytes=96 << 30)))
    plan.best().name, plan.best().kv_tokens_total
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tenk.engine.config import DEFAULT_MAX_NUM_BATCHED_TOKENS
from tenk.engine.kv_cache import kv_block_bytes, kv_cache_num_blocks, kv_cache_torch_dtype
from tenk.engine.kv_cache_dtype import check_kv_cache_dtype
from tenk.errors import ConfigError
from tenk.models.checkpoint_specs import checkpoint_tensor_specs
from tenk.plan.hardware import GpuSpec
from tenk.plan.memory import RankMemory, activation_peak_bytes, cuda_graph_pool_bytes, non_tensor_bytes
from tenk.plan.quant_schemes import make_scheme
from tenk.plan.roofline import DecodeStep, decode_step
from tenk.plan.source import ModelSource
from tenk.plan.units import GIB, gib, tokens
from tenk.plan.weights import WeightsPerGpu, itemsize, kinds_for, rope_table_bytes, weights_per_gpu

_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


@dataclass(slots=True)
class PlanConfig:
    gpus: int
    gpu: GpuSpec
    quantizations: tuple[str, ...] = ("nvfp4", "fp8", "bf16")
    max_model_len: int | None = None  # None: the model's max_position_embeddings (lowered to fit, as the engine does)
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256  # per replica
    max_num_batched_tokens: int | None = None  # None: the engine's default, max(8192, max_num_seqs)
    block_size: int = 16
    context_len: int = 2048  # tokens a sequence holds (prompt + output): sets concurrency and KV reads
    dtype: str = "bfloat16"  # the engine's dtype for unquantized weights (and the KV cache under "auto")
    kv_cache_dtype: str = "auto"  # the engine's --kv-cache-dtype: auto (= dtype) | fp8 | fp8_e4m3 (1 byte)
    kv_cache_memory_bytes: int | None = None  # fixes the KV bytes per GPU (the engine's CPU knob)
    tp_sizes: tuple[int, ...] | None = None  # None: every power of two up to gpus

    def __post_init__(self) -> None:
        if not isinstance(self.gpus, int) or self.gpus < 1:
            raise ConfigError(f"--gpus must be a positive integer, got {self.gpus!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("max_num_seqs", "block_size", "context_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"--max-model-len must be at least 1, got {self.max_model_len}")
        self.dtype = _DTYPE_ALIASES.get(self.dtype, self.dtype)
        if self.dtype not in _TORCH_DTYPES:
            raise ConfigError(f"dtype must be bfloat16, float16 or float32, got {self.dtype!r}")
        self.kv_cache_dtype = check_kv_cache_dtype(self.kv_cache_dtype, "--kv-cache-dtype")
        if not self.quantizations:
            raise ConfigError("give at least one --quantization")
        if self.tp_sizes is None:
            self.tp_sizes = tuple(1 << i for i in range(self.gpus.bit_length()) if 1 << i <= self.gpus)


@dataclass(slots=True)
class LayoutPlan:
    quantization: str
    tp: int
    dp: int
    weights: WeightsPerGpu
    memory: RankMemory | None = None
    max_model_len: int = 0
    kv_tokens_per_replica: int = 0
    seqs_at_context: int = 0  # per replica
    batch: int = 0  # decode batch per replica the estimate uses
    step: DecodeStep | None = None
    single_stream: DecodeStep | None = None
    fits: bool = False
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"tp{self.tp}dp{self.dp}"

    @property
    def gpus(self) -> int:
        return self.tp * self.dp

    @property
    def kv_tokens_total(self) -> int:
        return self.kv_tokens_per_replica * self.dp

    @property
    def tok_s(self) -> float:
        if not self.fits or self.step is None:
            return 0.0
        return self.batch * self.dp / self.step.seconds

    @property
    def single_stream_tok_s(self) -> float:
        return 1.0 / self.single_stream.seconds if self.fits and self.single_stream else 0.0

    def as_dict(self) -> dict:
        m = self.memory
        out = {
            "layout": self.name, "quantization": self.quantization, "tp": self.tp, "dp": self.dp,
            "gpus": self.gpus, "fits": self.fits, "reason": self.reason, "notes": list(self.notes),
            "weights_per_gpu_bytes": self.weights.total,
            "weights_per_gpu_by_group": dict(self.weights.by_group),
            "max_model_len": self.max_model_len,
            "kv_tokens_per_replica": self.kv_tokens_per_replica,
            "kv_tokens_total": self.kv_tokens_total,
            "seqs_at_context_per_replica": self.seqs_at_context,
            "decode_batch_per_replica": self.batch,
            "est_output_tok_s": round(self.tok_s, 1),
            "est_single_stream_tok_s": round(self.single_stream_tok_s, 1),
        }
        if m is not None:
            out["memory_per_gpu"] = {
                "capacity": m.capacity, "utilization": m.utilization, "weights": m.weights,
                "rope_tables": m.rope_tables, "cuda_context": m.context, "activation_peak": m.activation,
                "cuda_graph_pool": m.graph_pool, "kv_cache": m.kv_bytes, "kv_block_bytes": m.kv_block_bytes,
                "kv_blocks": m.kv_blocks, "headroom_ok": m.headroom_ok,
            }
        if self.step is not None:
            s = self.step
            out["decode_step"] = {
                "batch": s.batch, "weight_bytes": s.weight_bytes, "kv_bytes": s.kv_bytes, "flops": s.flops,
                "memory_s": s.memory_s, "compute_s": s.compute_s, "comm_s": s.comm_s, "seconds": s.seconds,
                "bound": s.bound,
            }
        return out


@dataclass(slots=True)
class Plan:
    model: str
    config: PlanConfig
    layouts: list[LayoutPlan]  # ranked: fitting layouts by estimated tok/s, then the rest
    checkpoint_bytes: dict[str, int]  # quantization -> whole checkpoint (TP=1) bytes

    def fitting(self) -> list[LayoutPlan]:
        return [lp for lp in self.layouts if lp.fits]

    def best(self) -> LayoutPlan | None:
        fit = self.fitting()
        return fit[0] if fit else None

    def find(self, name: str, quantization: str | None = None) -> list[LayoutPlan]:
        return [lp for lp in self.layouts if lp.name == name and (quantization is None or lp.quantization == quantization)]

    def as_dict(self) -> dict:
        c = self.config
        return {
            "model": self.model,
            "hardware": {
                "gpus": c.gpus, "gpu": c.gpu.name, "memory_bytes": c.gpu.memory_bytes,
                "hbm_bandwidth": c.gpu.hbm_bandwidth, "peak_flops": c.gpu.peak_flops, "interconnect": c.gpu.interconnect,
            },
            "settings": {
                "gpu_memory_utilization": c.gpu_memory_utilization, "max_num_seqs": c.max_num_seqs,
                "max_model_len": c.max_model_len, "max_num_batched_tokens": c.max_num_batched_tokens,
                "block_size": c.block_size, "context_len": c.context_len, "dtype": c.dtype,
                "kv_cache_dtype": c.kv_cache_dtype,
            },
            "checkpoint_bytes": dict(self.checkpoint_bytes),
            "layouts": [lp.as_dict() for lp in self.layouts],
        }


def _size_rank(source: ModelSource, cfg: PlanConfig, lp: LayoutPlan, max_model_len: int) -> None:
    mc = source.model_config
    tp = lp.tp
    kv_dtype = kv_cache_torch_dtype(cfg.kv_cache_dtype, _TORCH_DTYPES[cfg.dtype])
    a = itemsize(cfg.dtype)
    mnbt = cfg.max_num_batched_tokens or max(DEFAULT_MAX_NUM_BATCHED_TOKENS, cfg.max_num_seqs)
    rope = rope_table_bytes(mc)
    context = non_tensor_bytes(tp)
    activation = activation_peak_bytes(
        mc, max_num_batched_tokens=mnbt, max_model_len=max_model_len, max_num_seqs=cfg.max_num_seqs, tp=tp, dtype_bytes=a
    )
    used = lp.weights.total + rope + context + activation
    # The engine's own sizing function, called as ModelRunner._size_kv_cache calls it.
    blocks = kv_cache_num_blocks(
        mc, dtype=kv_dtype, block_size=cfg.block_size, tp_size=tp, gpu_memory_utilization=cfg.gpu_memory_utilization,
        total_bytes=cfg.gpu.memory_bytes, used_bytes=used, kv_cache_memory_bytes=cfg.kv_cache_memory_bytes,
        max_num_seqs=cfg.max_num_seqs, max_model_len=max_model_len,
    )
    lp.memory = RankMemory(
        capacity=cfg.gpu.memory_bytes, utilization=cfg.gpu_memory_utilization, weights=lp.weights.total,
        rope_tables=rope, context=context, activation=activation,
        graph_pool=cuda_graph_pool_bytes(
            mc, max_num_seqs=cfg.max_num_seqs, max_model_len=max_model_len, block_size=cfg.block_size, tp=tp,
            dtype_bytes=a, max_num_batched_tokens=mnbt, activation=activation,
        ),
        kv_block_bytes=kv_block_bytes(mc, cfg.block_size, kv_dtype, tp), kv_blocks=blocks,
    )


def _plan_layout(source: ModelSource, cfg: PlanConfig, lp: LayoutPlan) -> None:
    mc = source.model_config
    if lp.weights.problems:
        lp.reason = "cannot split: " + "; ".join(lp.weights.problems)
        return
    model_max = mc.max_position_embeddings
    max_model_len = cfg.max_model_len or model_max
    if max_model_len > model_max:
        raise ConfigError(f"--max-model-len {max_model_len} is longer than the model's max_position_embeddings {model_max}")
    _size_rank(source, cfg, lp, max_model_len)
    m = lp.memory
    budget = m.budget if cfg.kv_cache_memory_bytes is None else m.capacity
    if m.kv_blocks < 1 or (cfg.kv_cache_memory_bytes is None and m.used_before_kv >= budget):
        runtime = m.used_before_kv - m.weights
        lp.reason = (f"does not fit: needs {gib(m.weights)} of weights per GPU (+{gib(runtime)} runtime), "
                     f"{gib(budget)} usable at utilization {cfg.gpu_memory_utilization:g}")
        return
    capacity = m.kv_blocks * cfg.block_size
    lp.kv_tokens_per_replica = capacity
    if capacity < max_model_len:
        if cfg.max_model_len is not None:
            lp.reason = f"does not fit: the KV cache holds {tokens(capacity)} tokens, less than --max-model-len {max_model_len}"
            return
        lp.notes.append(f"max_model_len lowered to {capacity} (all the KV cache holds), as the engine does")
        max_model_len = capacity
    lp.max_model_len = max_model_len
    context = min(cfg.context_len, max_model_len)
    blocks_per_seq = -(-context // cfg.block_size)
    lp.seqs_at_context = m.kv_blocks // blocks_per_seq
    lp.batch = min(cfg.max_num_seqs, lp.seqs_at_context)
    kv_tok = m.kv_block_bytes // cfg.block_size
    lp.step = decode_step(mc, lp.weights, cfg.gpu, batch=lp.batch, context=context, kv_bytes_per_token=kv_tok)
    lp.single_stream = decode_step(mc, lp.weights, cfg.gpu, batch=1, context=context, kv_bytes_per_token=kv_tok)
    lp.fits = True
    if cfg.kv_cache_memory_bytes is None and not m.headroom_ok:
        lp.notes.append(
            f"CUDA graphs (~{gib(m.graph_pool)}) may not fit beside the KV cache: lower "
            "--gpu-memory-utilization or serve with --enforce-eager"
        )


def make_plan(source: ModelSource, cfg: PlanConfig) -> Plan:
    mc = source.model_config
    if "specs" not in source.cache:  # the same model planned again (tests, autotune) skips this
        source.cache["specs"] = checkpoint_tensor_specs(source.hf_config)
    specs = source.cache["specs"]
    layouts: list[LayoutPlan] = []
    checkpoint_bytes: dict[str, int] = {}
    for qname in cfg.quantizations:
        scheme = make_scheme(qname, source.checkpoint_quant)
        key = ("kinds", qname)
        if key not in source.cache:
            source.cache[key] = kinds_for(specs, mc, scheme)
        kinds = source.cache[key]
        checkpoint_bytes[scheme.name] = weights_per_gpu(kinds, mc, 1, cfg.dtype, scheme.name).total
        for tp in cfg.tp_sizes:
            if tp > cfg.gpus:
                continue
            w = weights_per_gpu(kinds, mc, tp, cfg.dtype, scheme.name)
            first = LayoutPlan(scheme.name, tp, 1, w)
            _plan_layout(source, cfg, first)
            layouts.append(first)
            if not first.fits:
                continue  # more replicas of a layout that does not fit do not fit either
            for dp in range(2, cfg.gpus // tp + 1):
                lp = LayoutPlan(scheme.name, tp, dp, w)
                _plan_layout(source, cfg, lp)
                layouts.append(lp)
    layouts.sort(key=_rank_key)
    return Plan(source.label, cfg, layouts, checkpoint_bytes)


def _rank_key(lp: LayoutPlan):
    if lp.fits:
        return (0, -lp.tok_s, lp.gpus, lp.tp)
    return (1, lp.weights.total or GIB * 1e6, lp.tp, lp.dp)
