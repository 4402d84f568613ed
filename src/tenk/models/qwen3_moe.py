from tenk.models.base import CausalLM, Rule


class Qwen3MoeForCausalLM(CausalLM):
    """Qwen3-MoE: per-head QK-norm, softmax router -> top-k -> renormalise if norm_topk_prob."""

    CHECKPOINT_RULES = (
        Rule(r"\.mlp\.gate\.weight$", ".mlp.router.gate.weight"),
        Rule(r"\.mlp\.experts\.(\d+)\.gate_proj\.", ".mlp.experts.w13_", "w1", 1),
        Rule(r"\.mlp\.experts\.(\d+)\.up_proj\.", ".mlp.experts.w13_", "w3", 1),
        Rule(r"\.mlp\.experts\.(\d+)\.down_proj\.", ".mlp.experts.w2_", "w2", 1),
    )
