from tenk.models.base import CausalLM


class Qwen3ForCausalLM(CausalLM):
    """Dense Qwen3: per-head QK-norm (set by ModelConfig.qk_norm = "per_head")."""
