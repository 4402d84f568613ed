"""tenk: high-throughput serving for quantized Mixture-of-Experts LLMs.

`from tenk import LLM, SamplingParams` mirrors vLLM's offline API. The names load lazily so
`import tenk` (and the CLI's --help) stays fast and does not import torch.
"""

from tenk.version import __version__

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    if name == "LLM":
        from tenk.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from tenk.engine.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'tenk' has no attribute {name!r}")
