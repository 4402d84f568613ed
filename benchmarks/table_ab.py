"""A/B of two launch tables' MoE entries on this GPU, the rule new entries go into a shipped table by.

    python benchmarks/table_ab.py OLD.json NEW.json [--format nvfp4|fp8] [--models qwen3,minimax@2]
                                  [--tokens 16,256,512] [--rounds 3] [--name NAME] [--merge-into OUT.json]

For each model (a preset, `qwen3` / `minimax` for short; `@N` for its TP=N expert shard) and token
count whose bucket holds different configs in the two tables: whole MoE calls (align, GEMMs,
combine) with each config, as CUDA graph replays of one call and of a chain of 4 calls on
different routings (a decode layer's MoE inside a step), do_bench medians alternated over
--rounds rounds (old first in even rounds), and whether the outputs are bit for bit. A bucket's
new entry wins when both ratios (isolated, chain; best old / best new) are >= 1 and their
geometric mean passes 1.005x; --merge-into writes OLD with the winning entries of NEW.
Writes NAME_<gpu>.json (default moe_table_ab) under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tuning  # noqa: E402
from moe_kernels import CHAIN, gpu_tag, make_routing  # noqa: E402
from moe_kernels import Shape as MoeShape  # noqa: E402

WIN_GEOMEAN = 1.005  # both ratios >= 1 and their geometric mean past this: the new entry is taken


def parse_model(spec: str) -> tuple[str, int]:
    """'qwen3' -> ('qwen3', 1); 'minimax@2' -> ('minimax', 2): a TP=2 expert shard."""
    name, _, tp = spec.partition("@")
    return name, int(tp or 1)


def shape_of(spec: str) -> MoeShape:
    name, tp = parse_model(spec)
    shapes = list(tuning.moe_shapes([name], [tp]))
    if not shapes:
        raise SystemExit(f"{spec}: not a MoE model whose TP={tp} shard takes the kernels' 64-wide tiles")
    _, _, (e, h, i, k) = shapes[0]
    return MoeShape(spec, e, h, i, k)


def entries(old: dict, new: dict, key: str, tokens: int) -> tuple[dict | None, dict | None]:
    """The two tables' entries for the bucket of `tokens` (None where a table lacks it)."""
    from tenk.kernels.configs.nvfp4 import bucket

    b = str(bucket(tokens))
    return old.get("moe", {}).get(key, {}).get(b), new.get("moe", {}).get(key, {}).get(b)


def wins(iso_ratio: float, chain_ratio: float) -> bool:
    return min(iso_ratio, chain_ratio) >= 1.0 and math.sqrt(iso_ratio * chain_ratio) > WIN_GEOMEAN


def merged(old: dict, new: dict, rows: list[dict]) -> dict:
    """OLD with each winning row's bucket taken from NEW (its `ms`: the new config's best isolated time)."""
    from tenk.kernels.configs.nvfp4 import bucket

    out = json.loads(json.dumps(old))
    for row in rows:
        if wins(row["iso_ratio"], row["chain_ratio"]):
            b = str(bucket(row["tokens"]))
            out["moe"][row["key"]][b] = {**new["moe"][row["key"]][b], "ms": round(min(row["iso_ms"]["new"]), 5)}
    return out


def _runner(fmt: str):
    """(config class, make_experts(shape), run(x, experts, tw, ids, out, cfg)): the format's tuner's own."""
    if fmt == "nvfp4":
        import tune_nvfp4 as tuner

        from tenk.kernels.configs.nvfp4 import Nvfp4MoeConfig as config_cls
    else:
        import tune_fp8 as tuner

        from tenk.kernels.configs.fp8 import Fp8MoeConfig as config_cls
    return config_cls, tuner.make_experts, tuner.run_moe


def ab(old: dict, new: dict, fmt: str, models: list[str], tokens_list: list[int], rounds: int) -> list[dict]:
    import triton.testing

    from tenk.kernels.configs.nvfp4 import moe_key
    from tenk.kernels.testing import capture_cuda_graph

    bench = lambda fn: float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    config_cls, make_experts, run = _runner(fmt)
    rows = []
    for spec in models:
        shape = shape_of(spec)
        key = moe_key(shape.experts, shape.hidden, shape.inter, shape.top_k)
        weights = None
        for tokens in tokens_list:
            pair = entries(old, new, key, tokens)
            cfgs = None if None in pair else dict(zip(("old", "new"), map(config_cls.from_dict, pair)))
            if cfgs is None or cfgs["old"] == cfgs["new"]:
                print(f"{spec} {tokens}: same config (or missing), skipped", flush=True)
                continue
            weights = weights if weights is not None else make_experts(shape)
            x, tw, ids = make_routing(shape, tokens, "cuda", seed=tokens)
            batches = [make_routing(shape, tokens, "cuda", seed=1000 * tokens + j) for j in range(CHAIN)]
            outs = [torch.empty_like(b[0]) for b in batches]
            results, graphs = {}, {}
            for n, c in cfgs.items():
                o = torch.empty_like(x)
                one = lambda c=c, o=o: run(x, weights, tw, ids, o, c)
                chain = lambda c=c: [run(b[0], weights, b[1], b[2], oo, c) for b, oo in zip(batches, outs)]
                one()
                torch.cuda.synchronize()
                results[n] = o
                graphs[n] = (capture_cuda_graph(one), capture_cuda_graph(chain))
            iso, ch = {n: [] for n in cfgs}, {n: [] for n in cfgs}
            for r in range(rounds):
                for n in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    iso[n].append(bench(graphs[n][0].replay))
                    ch[n].append(bench(graphs[n][1].replay) / CHAIN)
            row = {"model": spec, "key": key, "tokens": tokens, "configs": {n: c.to_dict() for n, c in cfgs.items()},
                   "same_output": bool(torch.equal(results["old"], results["new"])), "iso_ms": iso, "chain_ms": ch,
                   "iso_ratio": min(iso["old"]) / min(iso["new"]), "chain_ratio": min(ch["old"]) / min(ch["new"])}
            row["taken"] = wins(row["iso_ratio"], row["chain_ratio"])
            rows.append(row)
            print(f"{spec} {tokens}: isolated {row['iso_ratio']:.3f}x chain {row['chain_ratio']:.3f}x "
                  f"(us old/new {min(iso['old']) * 1e3:.1f}/{min(iso['new']) * 1e3:.1f}, chain "
                  f"{min(ch['old']) * 1e3:.1f}/{min(ch['new']) * 1e3:.1f}) same output {row['same_output']} "
                  f"{'taken' if row['taken'] else 'kept old'}", flush=True)
            del graphs
        weights = None
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--format", choices=["nvfp4", "fp8"], default="nvfp4")
    parser.add_argument("--models", default="qwen3,minimax", help="presets, @N for a TP=N expert shard")
    parser.add_argument("--tokens", default="16,64,256,512,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="moe_table_ab")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    parser.add_argument("--merge-into", default=None, help="write OLD with the winning entries of NEW here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("table_ab.py needs a CUDA GPU", file=sys.stderr)
        return 2
    old, new = (json.loads(Path(p).read_text()) for p in (args.old, args.new))
    started = time.time()
    rows = ab(old, new, args.format, args.models.split(","), [int(t) for t in args.tokens.split(",")], args.rounds)
    path = Path(args.out) / f"{args.name}_{gpu_tag()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "format": args.format,
                                "old": args.old, "new": args.new, "rounds": args.rounds, "rule": f"both ratios >= 1, "
                                f"geometric mean > {WIN_GEOMEAN}", "seconds": round(time.time() - started, 1),
                                "rows": rows}, indent=1))
    print(f"wrote {path}")
    if args.merge_into:
        Path(args.merge_into).write_text(json.dumps(merged(old, new, rows), indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.merge_into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
