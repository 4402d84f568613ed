"""`tenk generate MODEL -p TEXT`: offline generation from the shell."""

from __future__ import annotations

from typing import Optional

import typer

from tenk.cli.common import console, setup_logging, user_errors


def register(app: typer.Typer) -> None:
    @app.command(help="Generate text offline from a model directory (or a preset with --load-format dummy).")
    @user_errors
    def generate(
        model: str = typer.Argument(..., help="Hugging Face model directory."),
        prompt: list[str] = typer.Option(..., "--prompt", "-p", help="Prompt text; repeat for several."),
        max_tokens: int = typer.Option(32, help="Tokens to generate per prompt."),
        temperature: float = typer.Option(0.0, help="0 = greedy."),
        top_p: float = typer.Option(1.0),
        top_k: int = typer.Option(-1, help="-1 = off."),
        seed: Optional[int] = typer.Option(None, help="Per-request sampling seed."),
        chat: bool = typer.Option(False, "--chat", help="Wrap each prompt as a user message through the chat template."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        dtype: str = typer.Option("auto", help="auto, bfloat16, float16 or float32."),
        load_format: str = typer.Option("auto", help="auto/safetensors, or dummy for random weights."),
        max_model_len: Optional[int] = typer.Option(None),
        tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", "--tp", help="Ranks (GPUs; processes on CPU)."),
        enable_expert_parallel: bool = typer.Option(
            False, "--enable-expert-parallel", help="With --tp: split the experts across ranks."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        setup_logging(verbose)
        from tenk.engine.llm import LLM
        from tenk.engine.sampling_params import SamplingParams
        from tenk.errors import ConfigError

        try:
            params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        llm = LLM(model, device=device, dtype=dtype, load_format=load_format, max_model_len=max_model_len,
                  tensor_parallel_size=tensor_parallel_size, enable_expert_parallel=enable_expert_parallel)
        with llm:  # stops tensor-parallel workers on the way out
            if chat:
                outs = llm.chat([[{"role": "user", "content": p}] for p in prompt], params, use_tqdm=False)
            else:
                outs = llm.generate(list(prompt), params, use_tqdm=False)
        for p, out in zip(prompt, outs):
            console.print(f"[bold]{p}[/bold]", highlight=False)
            typer.echo(out.outputs[0].text)
