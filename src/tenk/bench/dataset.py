"""Workloads: random-token prompts of exact lengths in the server's tokens, or a JSONL file.

Exact random prompts: draw random token ids, decode them to text, count the text the way the
server will (special tokens and chat template included), then trim or extend the ids and repeat
until the count is exactly the target. Decoding and re-encoding is not an identity for BPE
tokenizers (merges across token boundaries, partial UTF-8 bytes), hence the loop. Fresh random
ids for every prompt keep prefix caches from inflating the numbers.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tenk.bench.config import BenchConfig, LengthRange
from tenk.bench.records import Prompt
from tenk.errors import ConfigError

MAX_FIXUP_ROUNDS = 16


@dataclass(slots=True)
class DatasetStats:
    prompts: int = 0
    inexact: int = 0  # random prompts whose length could not be made exact (kept, counted)
    fixup_rounds: int = 0  # tokenize round-trips spent beyond the first per prompt


def _draw(rng: random.Random, r: LengthRange) -> int:
    return r.low if r.low == r.high else rng.randint(r.low, r.high)


def clean_id_pool(counter, rng: random.Random, want: int = 4096, tries: int = 30000) -> list[int]:
    """Token ids that decode to printable text and re-encode to themselves. Drawing prompts
    from these makes the fix-up loop converge in one or two rounds. Local tokenizers only."""
    tok = getattr(counter, "tok", None)
    if tok is None:
        return list(range(1000, counter.vocab_size))
    pool: list[int] = []
    n = counter.vocab_size
    for _ in range(tries):
        i = rng.randrange(n)
        if i in counter.special_ids:
            continue
        piece = tok.decode([i])
        if piece and "\ufffd" not in piece and piece.isprintable() and counter.encode_plain(piece) == [i]:
            pool.append(i)
            if len(pool) >= want:
                break
    if len(pool) < 16:  # a tiny or odd vocabulary: fall back to every non-special id
        pool = [i for i in range(n) if i not in counter.special_ids]
    return pool


async def exact_text(target: int, count, decode, rng: random.Random, pool: list[int], overhead: int) -> tuple[str, int, int]:
    """Text whose server-side token count is `target`. Returns (text, count, rounds)."""
    ids = [rng.choice(pool) for _ in range(max(1, target - overhead))]
    best: tuple[str, int] | None = None
    for rounds in range(MAX_FIXUP_ROUNDS):
        text = await decode(ids)
        n = await count(text)
        if n == target:
            return text, n, rounds
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (text, n)
        if n > target:
            if len(ids) <= 1:
                break
            del ids[max(1, len(ids) - (n - target)) :]
        else:
            ids.extend(rng.choice(pool) for _ in range(target - n))
    return best[0], best[1], MAX_FIXUP_ROUNDS


async def random_prompts(config: BenchConfig, n: int, seed: int, counter, pool: list[int] | None) -> tuple[list[Prompt], DatasetStats]:
    rng = random.Random(seed)
    stats = DatasetStats(prompts=n)
    lengths = [(_draw(rng, config.input_len), _draw(rng, config.output_len)) for _ in range(n)]
    if config.prompt_format == "ids":
        n_vocab = getattr(counter, "vocab_size", 32000)
        vocab = pool or list(range(min(1000, n_vocab // 2), n_vocab))
        return [Prompt([rng.choice(vocab) for _ in range(li)], None, li, lo) for li, lo in lengths], stats
    if counter is None:
        raise ConfigError(
            "--dataset random needs token counts: give --tokenizer PATH, use a server with /tokenize, "
            "or send token ids with --prompt-format ids"
        )
    pool = pool or range(1000, counter.vocab_size)
    chat = config.endpoint == "chat"
    if chat:
        async def count(text: str) -> int:
            return await counter.count_chat([{"role": "user", "content": text}])
    else:
        count = counter.count_text
    overhead = await count("")  # BOS and chat template tokens around the content
    sem = asyncio.Semaphore(32)  # bounded parallel /tokenize round-trips

    async def one(i: int, li: int, lo: int) -> Prompt:
        async with sem:
            text, got, rounds = await exact_text(li, count, counter.decode, random.Random(seed * 1_000_003 + i), pool, overhead)
        stats.fixup_rounds += rounds
        if got != li:
            stats.inexact += 1
        if chat:
            return Prompt(None, [{"role": "user", "content": text}], got, lo)
        return Prompt(text, None, got, lo)

    prompts = await asyncio.gather(*(one(i, li, lo) for i, (li, lo) in enumerate(lengths)))
    return list(prompts), stats


def jsonl_prompts(config: BenchConfig, n: int, seed: int) -> tuple[list[Prompt], DatasetStats]:
    path = Path(config.dataset_path or "")
    if not path.is_file():
        raise ConfigError(f"--dataset-path {str(path)!r} is not a file")
    rows: list[Prompt] = []
    rng = random.Random(seed)
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{path}:{lineno} is not valid JSON") from None
        max_tokens = int(obj.get("max_tokens") or _draw(rng, config.output_len))
        if "messages" in obj:
            if config.endpoint != "chat":
                raise ConfigError(f"{path}:{lineno} has 'messages'; use --endpoint chat for this file")
            rows.append(Prompt(None, obj["messages"], None, max_tokens))
        elif "prompt" in obj:
            rows.append(Prompt(obj["prompt"], None, None, max_tokens))
        else:
            raise ConfigError(f"{path}:{lineno} needs a 'prompt' or a 'messages' field")
    if not rows:
        raise ConfigError(f"{path} has no prompts")
    start = seed % len(rows)  # each level starts elsewhere in the file, cycling when it is short
    return [rows[(start + i) % len(rows)] for i in range(n)], DatasetStats(prompts=n)
