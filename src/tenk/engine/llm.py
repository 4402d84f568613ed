"""LLM: the offline API, shaped like vLLM's.

    llm = LLM("path/to/hf_dir", max_num_seqs=64)
    outs = llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=32))
    outs[0].outputs[0].text

Keyword arguments are EngineConfig fields; anything else is refused by name."""

from __future__ import annotations

import time
from itertools import count
from typing import Any, Sequence

from tenk.engine.config import EngineConfig
from tenk.engine.llm_engine import LLMEngine
from tenk.engine.outputs import RequestOutput
from tenk.engine.sampling_params import SamplingParams
from tenk.errors import ConfigError

Conversation = list[dict[str, Any]]


class LLM:
    def __init__(self, model: str, **kwargs: Any):
        unknown = sorted(set(kwargs) - EngineConfig.field_names())
        if unknown:
            raise ConfigError(f"LLM() got unknown option(s) {', '.join(unknown)}; options are EngineConfig fields")
        kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None = the default
        self.engine = LLMEngine(EngineConfig(model=model, **kwargs))
        self._ids = count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def close(self) -> None:
        """Stop tensor-parallel workers now (otherwise: when this object is collected, or at exit)."""
        self.engine.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[dict] | None = None,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        prompt_token_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Outputs in input order. `prompts` are strings (or {"prompt_token_ids": [...]} dicts);
        or give `prompt_token_ids` (one list of ids or a list of them) instead."""
        token_lists = self._token_lists(prompts, prompt_token_ids)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(token_lists)
        else:
            params = list(sampling_params)
            if len(params) != len(token_lists):
                raise ValueError(f"got {len(params)} sampling_params for {len(token_lists)} prompts")
        return self._run(token_lists, params, use_tqdm)

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """One conversation (a list of {"role", "content"} dicts) or a list of them, rendered
        through the tokenizer's chat template."""
        tok = self.engine.tokenizer
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        if getattr(tok, "chat_template", None) is None:
            raise ConfigError("this model's tokenizer has no chat template; use generate() with plain prompts")
        token_lists = []
        for conv in conversations:
            text = tok.apply_chat_template(
                conv, tokenize=False, add_generation_prompt=add_generation_prompt, **(chat_template_kwargs or {})
            )
            token_lists.append(tok.encode(text, add_special_tokens=False))
        return self.generate(prompt_token_ids=token_lists, sampling_params=sampling_params, use_tqdm=use_tqdm)

    # ------------------------------------------------------------------ internals

    def _token_lists(self, prompts, prompt_token_ids) -> list[list[int]]:
        if (prompts is None) == (prompt_token_ids is None):
            raise ValueError("give either prompts or prompt_token_ids")
        if prompt_token_ids is not None:
            ids = list(prompt_token_ids)
            if ids and isinstance(ids[0], int):
                return [ids]
            return [list(p) for p in ids]
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        tok = self.engine.tokenizer
        out = []
        for p in prompts:
            if isinstance(p, str):
                out.append(tok.encode(p))
            elif isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p):
                out.append(list(p))
            elif isinstance(p, dict) and "prompt_token_ids" in p:
                out.append(list(p["prompt_token_ids"]))
            elif isinstance(p, dict) and "prompt" in p:
                out.append(tok.encode(p["prompt"]))
            else:
                raise ValueError(
                    f"a prompt must be a string, a list of token ids or a dict with 'prompt_token_ids', got {type(p).__name__}"
                )
        return out

    def _run(self, token_lists: list[list[int]], params: list[SamplingParams], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.engine
        ids = [f"llm-{next(self._ids)}" for _ in token_lists]
        try:
            for rid, toks, p in zip(ids, token_lists, params):
                engine.add_request(rid, toks, p)
        except Exception:
            engine.abort_request(ids)
            raise
        results: dict[str, RequestOutput] = {}
        pbar = None
        if use_tqdm:
            from tqdm import tqdm

            pbar = tqdm(total=len(ids), desc="Generating", dynamic_ncols=True)
        start = time.perf_counter()
        generated = engine.generation_tokens_total
        try:
            while len(results) < len(ids) and engine.has_unfinished_requests():
                for out in engine.step(finished_only=True):
                    if out.finished:
                        results[out.request_id] = out
                        if pbar is not None:
                            pbar.update(1)
                if pbar is not None:
                    rate = (engine.generation_tokens_total - generated) / max(time.perf_counter() - start, 1e-9)
                    pbar.set_postfix_str(f"{rate:.0f} out tok/s", refresh=False)
        except BaseException:
            engine.abort_request(ids)  # Ctrl-C or an error: leave the engine clean for the next call
            raise
        finally:
            if pbar is not None:
                pbar.close()
        return [results[i] for i in ids]
