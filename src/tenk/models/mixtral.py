from tenk.models.base import CausalLM, Rule

# Mixtral and MiniMax-M2 name their MoE block `block_sparse_moe` with experts w1 (gate), w3 (up), w2 (down).
BLOCK_SPARSE_MOE_RULES = (
    Rule(r"\.block_sparse_moe\.gate\.", ".mlp.router.gate."),
    Rule(r"\.block_sparse_moe\.e_score_correction_bias$", ".mlp.router.e_score_correction_bias"),
    Rule(r"\.block_sparse_moe\.experts\.(\d+)\.w1\.", ".mlp.experts.w13_", "w1", 1),
    Rule(r"\.block_sparse_moe\.experts\.(\d+)\.w3\.", ".mlp.experts.w13_", "w3", 1),
    Rule(r"\.block_sparse_moe\.experts\.(\d+)\.w2\.", ".mlp.experts.w2_", "w2", 1),
)


class MixtralForCausalLM(CausalLM):
    """Mixtral: softmax router, top-k always renormalised, no QK-norm."""

    CHECKPOINT_RULES = BLOCK_SPARSE_MOE_RULES
