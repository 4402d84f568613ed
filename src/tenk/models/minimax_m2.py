from tenk.models.base import CausalLM
from tenk.models.mixtral import BLOCK_SPARSE_MOE_RULES


class MiniMaxM2ForCausalLM(CausalLM):
    """MiniMax-M2: partial RoPE (rotary_dim of head_dim), full-width QK-norm, sigmoid router
    choosing top-k on scores + e_score_correction_bias and weighting by the unbiased scores
    renormalised to 1. All of it is driven by ModelConfig; the names are Mixtral's."""

    CHECKPOINT_RULES = BLOCK_SPARSE_MOE_RULES
