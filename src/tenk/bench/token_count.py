"""Token counting the way the server counts: a local Hugging Face tokenizer directory, or the
server's own vLLM-style `POST /tokenize` and `/detokenize`. Both expose the same async methods so
the prompt builder does not care which one it has."""

from __future__ import annotations

import aiohttp

from tenk.errors import ConfigError, TenkError


class LocalTokenizer:
    """transformers AutoTokenizer from a local directory (no hub access)."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # transformers raises several types for a bad directory
            raise ConfigError(f"--tokenizer {path!r} is not a loadable Hugging Face tokenizer directory ({exc})") from None
        self.vocab_size = len(self.tok)
        self.special_ids = set(self.tok.all_special_ids)

    async def count_text(self, text: str) -> int:
        # vLLM tokenizes a text prompt of /v1/completions with add_special_tokens=True
        return len(self.tok(text, add_special_tokens=True)["input_ids"])

    async def count_chat(self, messages: list[dict]) -> int:
        if not getattr(self.tok, "chat_template", None):
            raise ConfigError("the tokenizer has no chat template, so chat prompt lengths cannot be made exact")
        out = self.tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        return len(out["input_ids"] if hasattr(out, "keys") else out)

    async def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    async def count_output(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def encode_plain(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]


# Text whose tokens seed the random prompts when only the server tokenizes: the server's
# vocabulary size is unknown, but every id it returns for ordinary text is a real, clean token.
POOL_TEXT = " ".join(
    "the of and to in is was for on that with as by at from his it an were are which this be or "
    "has had one first new after who also two their its but they been have not year time more "
    "city world school state people during between three other only over would most later "
    "system model token server client memory expert layer batch cache prefill decode stream "
    "quick brown fox jumps lazy dog river mountain garden window yellow purple silver engine "
    "north south east west music history science market energy water light number paper".split()
    + [str(i) for i in range(0, 1000, 7)]
    + list("!?.,;:()[]{}-+=*/&%$#@")
)


class ServerTokenizer:
    """The server's /tokenize and /detokenize (vLLM's request and response shapes)."""

    vocab_size = 32000  # only for --prompt-format ids without a tokenizer: a range all vocabularies cover
    special_ids: set[int] = set()

    def __init__(self, session: aiohttp.ClientSession, url: str, model: str) -> None:
        self.session = session
        self.url = url
        self.model = model

    async def _post(self, path: str, body: dict) -> dict:
        try:
            async with self.session.post(self.url + path, json=body) as resp:
                if resp.status != 200:
                    raise TenkError(
                        f"{self.url}{path} answered HTTP {resp.status}; give --tokenizer PATH (a local "
                        "tokenizer directory) so prompt lengths can be made exact"
                    )
                return await resp.json()
        except aiohttp.ClientError as exc:
            raise TenkError(f"cannot reach {self.url}{path}: {exc}") from None

    async def probe(self) -> bool:
        """True when the server tokenizes (vLLM and tenk do; not every server does)."""
        try:
            await self._post("/tokenize", {"model": self.model, "prompt": "hello"})
            return True
        except TenkError:
            return False

    async def id_pool(self) -> list[int]:
        body = {"model": self.model, "prompt": POOL_TEXT, "add_special_tokens": False}
        return sorted(set((await self._post("/tokenize", body))["tokens"]))

    async def count_text(self, text: str) -> int:
        return int((await self._post("/tokenize", {"model": self.model, "prompt": text}))["count"])

    async def count_chat(self, messages: list[dict]) -> int:
        body = {"model": self.model, "messages": messages, "add_generation_prompt": True}
        return int((await self._post("/tokenize", body))["count"])

    async def decode(self, ids: list[int]) -> str:
        return (await self._post("/detokenize", {"model": self.model, "tokens": ids}))["prompt"]

    async def count_output(self, text: str) -> int:
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        return int((await self._post("/tokenize", body))["count"])
