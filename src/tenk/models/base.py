"""The decoder-only causal LM shared by the five families.

All five are the same skeleton (embed -> N x [norm, attention, norm, MLP or MoE] -> norm ->
lm_head); a family differs in its config (QK-norm, router, partial RoPE) and in its checkpoint
names, which each family file gives as a rename table (`CHECKPOINT_RULES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from tenk.kernels.attention import AttentionMetadata
from tenk.models.config import ModelConfig
from tenk.models.layers.attention import Attention, SelfAttention
from tenk.models.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from tenk.models.layers.mlp import GatedMLP
from tenk.models.layers.moe import SparseMoeBlock
from tenk.models.layers.norm import RMSNorm


@dataclass(frozen=True)
class Rule:
    """Checkpoint name -> (parameter name, shard id, expert id).
    `pattern` is a regex over the checkpoint name; `repl` its replacement (re.sub syntax);
    `shard` names the fused shard; `expert_group` the regex group holding the expert index."""

    pattern: str
    repl: str
    shard: str | None = None
    expert_group: int | None = None


# Dense parts, shared by every family.
COMMON_RULES = (
    Rule(r"\.self_attn\.q_proj\.", ".self_attn.qkv_proj.", "q"),
    Rule(r"\.self_attn\.k_proj\.", ".self_attn.qkv_proj.", "k"),
    Rule(r"\.self_attn\.v_proj\.", ".self_attn.qkv_proj.", "v"),
    Rule(r"\.mlp\.gate_proj\.", ".mlp.gate_up_proj.", "0"),
    Rule(r"\.mlp\.up_proj\.", ".mlp.gate_up_proj.", "1"),
)


def compile_rules(rules):
    return [(re.compile(r.pattern), r) for r in rules]


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, params_dtype, quant_factory=None, expert_parallel=False):
        super().__init__()
        prefix = f"model.layers.{layer_idx}"
        self.self_attn = SelfAttention(cfg, params_dtype, quant_factory, f"{prefix}.self_attn")
        if cfg.is_moe and layer_idx in cfg.moe_layers:
            self.mlp = SparseMoeBlock(cfg, params_dtype, quant_factory, f"{prefix}.mlp", expert_parallel)
        else:
            self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, params_dtype, quant_factory, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, params_dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, params_dtype)

    def forward(self, positions, hidden, residual, meta):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class DecoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig, params_dtype, quant_factory=None, expert_parallel=False):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, params_dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, params_dtype, quant_factory, expert_parallel) for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, params_dtype)

    def forward(self, input_ids, positions, meta):
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class CausalLM(nn.Module):
    """`forward(input_ids [T], positions [T], meta) -> hidden [T, H]`;
    `compute_logits(hidden [N, H]) -> [N, V] fp32` (upcast=False: in the weights' dtype)."""

    CHECKPOINT_RULES: tuple[Rule, ...] = ()

    def __init__(self, cfg: ModelConfig, params_dtype: torch.dtype, quant_factory=None, expert_parallel: bool = False):
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg, params_dtype, quant_factory, expert_parallel)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, params_dtype)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rules = compile_rules(self.CHECKPOINT_RULES + COMMON_RULES)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor, upcast: bool = True) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden, upcast)

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn.attn for layer in self.model.layers]

    def map_checkpoint_name(self, name: str) -> tuple[str, str | None, int | None]:
        """Checkpoint tensor name -> (parameter name, shard id, expert id)."""
        for rx, rule in self._rules:
            m = rx.search(name)
            if m:
                expert = int(m.group(rule.expert_group)) if rule.expert_group else None
                return rx.sub(rule.repl, name, count=1), rule.shard, expert
        return name, None, None
