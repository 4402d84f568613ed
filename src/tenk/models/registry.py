from tenk.errors import ConfigError
from tenk.models.config import ModelConfig


def model_class(cfg: ModelConfig):
    if cfg.model_type == "llama":
        from tenk.models.llama import LlamaForCausalLM as cls
    elif cfg.model_type == "qwen3":
        from tenk.models.qwen3 import Qwen3ForCausalLM as cls
    elif cfg.model_type == "qwen3_moe":
        from tenk.models.qwen3_moe import Qwen3MoeForCausalLM as cls
    elif cfg.model_type == "mixtral":
        from tenk.models.mixtral import MixtralForCausalLM as cls
    elif cfg.model_type == "minimax_m2":
        from tenk.models.minimax_m2 import MiniMaxM2ForCausalLM as cls
    else:
        raise ConfigError(f"model_type {cfg.model_type!r} is not supported")
    return cls
