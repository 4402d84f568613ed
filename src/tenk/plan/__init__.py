"""tenk plan: which GPU layout serves a model fastest.

    from tenk.plan import GpuSpec, PlanConfig, load_model_source, make_plan
    plan = make_plan(load_model_source("minimax-m2"), PlanConfig(gpus=4, gpu=GpuSpec(memory_bytes=96 << 30)))
    best = plan.best()   # LayoutPlan: .quantization .tp .dp .kv_tokens_total .tok_s

Files, one job each: source (config.json or preset), quant_schemes (format per weight and its
bytes), weights (bytes per GPU under TP), memory (activation / graph reserve, the KV budget),
roofline (decode step time), planner (enumerate, size, rank), render (table, JSON), emit
(launch scripts), launcher + autotune (start layouts, bench them, pick the best measured).
"""

from tenk.plan.hardware import GPU_PRESETS, GpuSpec, gpu_from_preset
from tenk.plan.planner import LayoutPlan, Plan, PlanConfig, make_plan
from tenk.plan.source import ModelSource, load_model_source

__all__ = [
    "GPU_PRESETS",
    "GpuSpec",
    "LayoutPlan",
    "ModelSource",
    "Plan",
    "PlanConfig",
    "gpu_from_preset",
    "load_model_source",
    "make_plan",
]
