from tenk.models.base import CausalLM


class LlamaForCausalLM(CausalLM):
    """Llama 2/3 and compatible dense models: no QK-norm, full RoPE. Names match the checkpoint."""
