"""tenk's own tokenizer: a byte-level BPE trained offline on English prose shipped in the package.

Random checkpoints need a tokenizer that exists without any download. This one is trained with
the `tokenizers` library (deterministic, well under a second at a few thousand tokens) on
`tenk/data/english_prose.txt`, has ChatML special tokens and chat template, and is saved the
way `transformers.AutoTokenizer.from_pretrained(dir)` and other engines read it. Trained
tokenizers are cached per vocab size, keyed by the corpus and library version.

The corpus yields some 4,200 tokens. A larger vocabulary (a preset's full 151,936 or 200,064) is
reached with synthetic merges: each joins two trained pieces, so every id a random-weight model
samples decodes to text. Benchmark clients that time the first chunk *with text* (guidellm,
aiperf) then see the first token, as they would with the real tokenizer.

The special tokens come first, so their ids are the same for every vocab size; presets use
these ids as bos/eos.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from tenk.errors import ConfigError

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 0, 1, 2
BYTE_ALPHABET = 256
MIN_VOCAB = len(SPECIAL_TOKENS) + BYTE_ALPHABET  # specials + every byte: merges start above this
DEFAULT_VOCAB = 4096

# ChatML, as Qwen and MiniMax serve it.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_CORPUS = "english_prose.txt"
_FORMAT_VERSION = 2  # bump when the training recipe changes, so old caches are not reused


def corpus_text() -> str:
    return resources.files("tenk").joinpath("data", _CORPUS).read_text(encoding="utf-8")


def default_cache_dir() -> Path:
    base = os.environ.get("TENK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tenk"
    )
    return Path(base) / "tokenizers"


def train_tokenizer(vocab_size: int = DEFAULT_VOCAB):
    """A fresh `tokenizers.Tokenizer`; same corpus and vocab_size give the same merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < MIN_VOCAB:
        raise ConfigError(f"tokenizer vocab size {vocab_size} is too small: it needs at least {MIN_VOCAB}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,  # the corpus is small: let rare words merge too, to reach a few thousand tokens
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # One paragraph per training sample; the corpus is small, so iterate it in memory.
    paragraphs = [p for p in corpus_text().split("\n\n") if p.strip()]
    tok.train_from_iterator(paragraphs, trainer=trainer, length=len(paragraphs))
    if tok.get_vocab_size() < vocab_size:
        tok = _extend_with_synthetic_merges(tok, vocab_size)
    return tok


def _extend_with_synthetic_merges(tok, vocab_size: int):
    """`tok` grown to vocab_size by merges of two trained pieces that decode to clean text alone
    (no special token, no partial UTF-8), in a fixed order: ids past the corpus's reach decode to
    text too. The merges rank after the trained ones, so prose still tokenizes much as before."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges: list = data["model"]["merges"]
    as_pairs = not merges or not isinstance(merges[0], str)  # tokenizers >= 0.20 writes [a, b]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    pieces = [t for t, i in by_id if i >= len(SPECIAL_TOKENS) and (s := tok.decode([i])) and "\ufffd" not in s]
    trained = pieces[BYTE_ALPHABET // 2 :] or pieces  # prefer learned words over single characters
    next_id = len(vocab)
    for a, b in ((a, b) for b in trained for a in trained):
        if next_id == vocab_size:
            break
        if a + b not in vocab:
            vocab[a + b] = next_id
            merges.append([a, b] if as_pairs else f"{a} {b}")
            next_id += 1
    if next_id < vocab_size:
        raise ConfigError(f"tokenizer vocab size {vocab_size} is too large: tenk can build at most {next_id} tokens")
    return Tokenizer.from_str(json.dumps(data))


def _tokenizer_config(model_max_length: int) -> dict:
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def _special_tokens_map() -> dict:
    return {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    }


def tokenizer_key(vocab_size: int) -> str:
    """Names one tokenizer build (its cache directory, and the stamp of preset directories):
    vocab size, corpus, `tokenizers` version and training recipe."""
    import tokenizers

    h = hashlib.sha256(corpus_text().encode())
    h.update(f"{vocab_size}|{tokenizers.__version__}|{_FORMAT_VERSION}".encode())
    return f"v{vocab_size}-{h.hexdigest()[:16]}"


def build_tokenizer(vocab_size: int = DEFAULT_VOCAB, cache_dir: str | Path | None = None) -> Path:
    """Directory holding the trained tokenizer.json for `vocab_size`, trained once and cached."""
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache_root / tokenizer_key(vocab_size)
    if (final / "tokenizer.json").is_file():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_root))
    try:
        train_tokenizer(vocab_size).save(str(tmp / "tokenizer.json"))
        try:
            os.rename(tmp, final)  # atomic: readers see the whole tokenizer or none
        except OSError:
            if not (final / "tokenizer.json").is_file():  # not a concurrent writer that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_tokenizer(
    out_dir: str | Path,
    vocab_size: int = DEFAULT_VOCAB,
    model_max_length: int = 4096,
    cache_dir: str | Path | None = None,
) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json (with the chat template) and
    special_tokens_map.json into `out_dir`; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = build_tokenizer(vocab_size, cache_dir)
    shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(model_max_length), indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(_special_tokens_map(), indent=2) + "\n")
    return [out / f for f in TOKENIZER_FILES]
