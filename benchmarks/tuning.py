"""What tune_nvfp4.py and tune_fp8.py share: the shapes they tune, coordinate descent over launch
knobs, timing, and the per-GPU table file they rewrite (tenk.kernels.configs.<format>_<gpu>.json).

Search: coordinate descent from the heuristic config. For each knob in turn every value is timed
with the others held at the best so far, and the best is kept. The MoE's token block (block_m)
instead seeds one descent per value near the pairs each expert gets (see `descend`). Each candidate is the whole call
(MoE: align + both GEMMs + combine) timed by do_bench's median, as a CUDA-graph replay up to 256
tokens (as the engine runs decode) and eagerly above. Entries measured here replace the file's,
others stay, so a long sweep can be split over several runs (each run stops at --budget-s and
writes what it has). A candidate that fails to compile (too much shared memory) is skipped. Each
measured entry keeps the winner's time ("ms") and the heuristic's, timed in the same run
("heuristic_ms").

A GPU of an architecture already tuned (an H200 beside the H100's table): `--refine --seed-from h100`
starts each bucket from that table's winner and refines it here; with `--no-search` it only times
that winner against the heuristic, a few seconds a bucket. Such entries say "seeded_from".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from moe_kernels import GRAPH_MAX_TOKENS  # noqa: E402

# batches the engine replays as CUDA graphs (its capture sizes reach --max-num-seqs, 512 by default):
# timed as graphs, since eager launches of 512-1,024 tokens are host-bound and rank configs by noise
TUNE_GRAPH_MAX_TOKENS = max(GRAPH_MAX_TOKENS, 1024)

from tenk.kernels.configs import nvfp4 as tables  # noqa: E402  (the table machinery of both formats)

ALIASES = {"qwen3": "qwen3-30b-a3b", "minimax": "minimax-m2"}  # the benchmarks' short names
TOKENS = (1, 16, 64, 256, 1024, 4096, 16384)  # benchmarks/moe_kernels.py's sizes; --tokens for more buckets
BLOCK_M_VALUES = (16, 32, 64, 128)  # token tiles the sweeps time
GUESS_TPS = (1, 2, 4)  # tensor-parallel expert shards the shipped tables list (--guess): FP8 MiniMax-M2 needs 4 H100s
DEVICE = "cuda"  # tests run the sweeps on CPU (the Triton interpreter) with tiny shapes
DTYPE = {"cuda": torch.bfloat16, "cpu": torch.float32}


def model_config(name: str):
    """--models entries: a preset (tenk.models.presets; "qwen3" / "minimax" for short) or a model
    directory (its config.json)."""
    from tenk.models.config import ModelConfig
    from tenk.models.presets import PRESETS, get_preset

    name = ALIASES.get(name, name)
    return ModelConfig.from_hf(get_preset(name)) if name in PRESETS else ModelConfig.from_dir(name)


def moe_shapes(models, tps):
    """(model, tp, (experts, hidden, FFN width per rank, top-k)) of the MoE models, where the
    width takes the kernels' 64-wide tiles."""
    for m in models:
        mc = model_config(m)
        for tp in tps if mc.is_moe else ():
            i = mc.moe_intermediate_size // tp
            if i % 64 == 0:
                yield m, tp, (mc.num_experts, mc.hidden_size, i, mc.num_experts_per_tok)


def dense_shapes(models, tps):
    """(model, tp, (N, K)) per rank of the dense projections: attention's q|k|v and o, and for dense
    models the MLP's gate|up and down (the dense GEMM serves "all-linear" checkpoints). KV heads
    fewer than the ranks are replicated."""
    for m in models:
        mc = model_config(m)
        seen = set()
        for tp in tps:
            kv = max(1, mc.num_kv_heads // tp) * mc.head_dim
            q = mc.num_heads // tp * mc.head_dim
            shapes = [(q + 2 * kv, mc.hidden_size), (mc.hidden_size, q)]
            if not mc.is_moe:
                inter = mc.intermediate_size // tp
                shapes += [(2 * inter, mc.hidden_size), (mc.hidden_size, inter)]
            for shape in shapes:
                if shape[1] % 64 == 0 and shape not in seen:
                    seen.add(shape)
                    yield m, tp, shape


# ---------------------------------------------------------------- the table file


def write_guesses(path: Path, gpu: str, fmt: str, heuristic_moe, heuristic_dense, models, tps) -> None:
    """The heuristics' configs for every tuned shape and bucket: what a GPU-less checkout ships until
    a GPU run replaces them. A table already at `path` keeps its measured entries (those with "ms");
    its other entries are rewritten, so they follow the heuristics as those change (a stale guess
    would win the lookup over the current heuristic)."""
    old = json.loads(path.read_text()) if path.exists() else {}

    def entries(section, key, guess):
        kept = old.get(section, {}).get(key, {})
        return {str(t): kept[str(t)] if "ms" in kept.get(str(t), {}) else guess(t).to_dict() for t in tables.M_BUCKETS}

    table = {"gpu": gpu, "moe": {}, "dense": {}}
    for _, _, (e, h, i, k) in moe_shapes(models, tps):
        table["moe"][tables.moe_key(e, h, i, k)] = entries("moe", tables.moe_key(e, h, i, k),
                                                           lambda t: heuristic_moe(t, e, h, i, k))  # fmt: skip
    for _, _, (n, k) in dense_shapes(models, tps):
        table["dense"][tables.dense_key(n, k)] = entries("dense", tables.dense_key(n, k),
                                                         lambda t: heuristic_dense(t, n, k))  # fmt: skip
    kept = sum("ms" in v for v in _entries(table))
    table["tuned"] = _all_measured(table)
    if kept:
        table["device"] = old.get("device")
        table["note"] = _measured_note(fmt)
    else:
        table["note"] = (f"heuristic guesses written without a GPU (tenk.kernels.configs.{fmt}.heuristic_*); rerun "
                         f"benchmarks/tune_{fmt}.py on this GPU to replace them with measured configs")
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}" + (f" ({kept} measured entries kept)" if kept else ""))


def _entries(data: dict) -> list[dict]:
    return [v for sec in ("moe", "dense") for shapes in data[sec].values() for v in shapes.values()]


def _all_measured(data: dict) -> bool:
    return all("ms" in v for v in _entries(data))  # entries without "ms" are still the guesses


def _measured_in(data: dict, section: str, key: str, tokens: int) -> dict | None:
    entry = data.get(section, {}).get(key, {}).get(str(tokens))
    return entry if entry is not None and "ms" in entry else None


def _measured_note(fmt: str) -> str:
    return (f"entries with an \"ms\" field were measured by benchmarks/tune_{fmt}.py (the winner's time; "
            "heuristic_ms: the heuristic config's, same run); the others are the heuristic guesses")


class TableFile:
    """A per-GPU table being rewritten: starts from the file at `path` (or the shipped one), keeps
    entries it does not measure, and is saved after every measured entry."""

    def __init__(self, path: Path, shipped: Path, gpu: str, fmt: str, trials_path: Path | None = None,
                 seed: tuple[str, Path] | None = None):  # fmt: skip
        self.path = path
        self.trials_path = trials_path  # every candidate's time, for reading the search afterwards
        self.trials: dict = {}
        start = path if path.exists() else shipped  # a fresh --out starts from the shipped table
        self.data = json.loads(start.read_text()) if start.exists() else {"moe": {}, "dense": {}}
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        self.data.update({"gpu": gpu, "tuned": True, "device": device, "note": _measured_note(fmt)})
        # --seed-from: another GPU's table, whose measured entries start the buckets this one lacks
        self.seed_tag, self.seed = (seed[0], json.loads(seed[1].read_text())) if seed else (None, None)

    def measured(self, section: str, key: str, tokens: int) -> dict | None:
        """The entry of exactly this bucket if a tuning run measured it (it has an "ms")."""
        return _measured_in(self.data, section, key, tokens)

    def start_entry(self, section: str, key: str, tokens: int) -> tuple[dict | None, str | None]:
        """Where --refine starts a bucket: this table's measured entry, else the seed table's
        (with its GPU tag), else (None, None)."""
        entry = self.measured(section, key, tokens)
        if entry is not None:
            return entry, None
        entry = _measured_in(self.seed, section, key, tokens) if self.seed else None
        return (entry, self.seed_tag) if entry is not None else (None, None)

    def put(self, section: str, key: str, tokens: int, cfg, ms: float, heuristic_ms: float,
            trials: list | None = None, seeded_from: str | None = None) -> None:  # fmt: skip
        entry = {**cfg.to_dict(), "ms": round(ms, 5), "heuristic_ms": round(heuristic_ms, 5)}
        if seeded_from is not None:  # the search began at that GPU's winner (timed here like any candidate)
            entry["seeded_from"] = seeded_from
        self.data[section].setdefault(key, {})[str(tokens)] = entry
        if self.trials_path is not None and trials is not None:
            self.trials.setdefault(section, {}).setdefault(key, {})[str(tokens)] = trials
            self.trials_path.write_text(json.dumps(self.trials, indent=1) + "\n")
        self.data["tuned"] = _all_measured(self.data)
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        tables.load_table.cache_clear()


# ---------------------------------------------------------------- measuring


def bench(fn, graph: bool) -> float:
    import triton.testing

    from tenk.kernels.testing import capture_cuda_graph

    if not graph:
        return float(triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median"))
    g = capture_cuda_graph(fn)
    return float(triton.testing.do_bench(g.replay, warmup=5, rep=25, return_mode="median"))


def try_time(fn, graph: bool) -> float:
    try:
        fn()  # compile outside the graph capture
        torch.cuda.synchronize()
        return bench(fn, graph)
    except Exception as exc:  # out of shared memory, invalid tile: not a candidate
        print(f"    skip: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        torch.cuda.synchronize()
        return float("inf")


def _finite(ms: float) -> float | None:
    return ms if ms != float("inf") else None


def descend(start, variants, measure: Callable[[object], float], deadline: float, trials: list | None = None):
    """Coordinate descent: variants is a list of (knob name, make), make(best) giving the candidate
    configs of that knob. Returns (best, its time, the start's time); `trials` collects every
    candidate timed ({"knob", "config", "ms"}; ms None: it did not compile or run).
    A leading "block_m" knob restarts instead: each of its configs seeds a descent over the other
    knobs, and the best of those wins. The GEMM tiles that suit 32-token blocks are not those that
    suit 16, so a single descent stayed at the heuristic's block: Qwen3-30B-A3B's experts at 512
    tokens kept 16-token blocks at 0.387 ms on an H100, where 32 runs 0.256 ms once its tiles are
    re-tuned."""
    if variants and variants[0][0] == "block_m":
        seeds = [start] + [c for c in variants[0][1](start) if c != start]
        runs = []
        for i, seed in enumerate(seeds):
            if i and time.time() > deadline:
                break
            runs.append(_descend(seed, variants[1:], measure, deadline, trials, "start" if not i else "block_m"))
        best, best_ms, _ = min(runs, key=lambda r: r[1])
        return best, best_ms, runs[0][2]
    return _descend(start, variants, measure, deadline, trials, "start")


def _descend(start, variants, measure, deadline: float, trials: list | None, start_knob: str):
    best = start
    best_ms = start_ms = measure(start)
    if trials is not None:
        trials.append({"knob": start_knob, "config": start.to_dict(), "ms": _finite(start_ms)})
    if start_knob != "start":
        print(f"    {start_knob} seed {start_ms:.4f} ms")
    for name, make in variants:
        if time.time() > deadline:
            break
        for cand in make(best):
            if cand == best:
                continue
            ms = measure(cand)
            if trials is not None:
                trials.append({"knob": name, "config": cand.to_dict(), "ms": _finite(ms)})
            if ms < best_ms:
                print(f"    {name}: {ms:.4f} ms (was {best_ms:.4f})")
                best, best_ms = cand, ms
    return best, best_ms, start_ms


def gemm_variants(field: str, knobs: dict):
    """Knob variants of one GEMM's config inside a MoE config (field 'w13'/'w2') or of a bare GEMM
    config (field ''). knobs: name -> values; "tile" values are (block_n, num_warps); a dict value
    changes several fields at once (a whole tile shape)."""

    def get(c):
        return getattr(c, field) if field else c

    def put(c, g):
        return dataclasses.replace(c, **{field: g}) if field else g

    out = []
    for knob, values in knobs.items():

        def make(c, knob=knob, values=values):
            g = get(c)
            if knob == "tile":
                changes = [dict(block_n=bn, num_warps=w) for bn, w in values]
            else:
                changes = [v if isinstance(v, dict) else {knob: v} for v in values]
            out = []
            for change in changes:
                try:
                    out.append(put(c, dataclasses.replace(g, **change)))
                except ValueError:  # a combination the config refuses (a wgmma MoE's tiles)
                    pass
            return out

        out.append((f"{field or 'gemm'}.{knob}", make))
    return out


def block_m_values(tokens: int, experts: int, top_k: int) -> tuple[int, ...]:
    """Token tiles worth timing (each seeds its own descent): from an eighth of the pairs each expert
    gets on average up to four times them; 256 only where experts get hundreds of pairs each
    (prefill), where a larger tile spreads each weight tile's dequantization over more tokens."""
    per_expert = tokens * top_k / experts
    values = BLOCK_M_VALUES + ((256,) if tokens * top_k >= 128 * experts else ())
    return tuple(bm for bm in values if 8 * bm >= per_expert and bm <= 4 * max(per_expert, 4))


def block_m_variants(values=BLOCK_M_VALUES):
    """The MoE's token tile, shared by both GEMMs."""

    def make(c):
        return [dataclasses.replace(c, block_m=bm, w13=dataclasses.replace(c.w13, block_m=bm),
                                    w2=dataclasses.replace(c.w2, block_m=bm)) for bm in values]  # fmt: skip

    return [("block_m", make)]


# ---------------------------------------------------------------- the sweeps


def _search(table: TableFile, section: str, key: str, tokens: int, start, variants, measure, deadline: float,
            heuristic=None, seeded_from: str | None = None) -> None:
    """heuristic: where the descent starts elsewhere (--refine), the heuristic config, timed here too
    so the entry's heuristic_ms stays the heuristic's time in the same run. seeded_from: the GPU
    whose table's entry `start` is (--seed-from), kept in the entry unless the heuristic won."""
    print(f"[{section} {key} T={tokens}]")
    trials = []
    best, ms, start_ms = descend(start, variants, measure, deadline, trials)
    previous = table.measured(section, key, tokens)
    if previous is not None:  # the winner of an earlier run, timed again here: a re-run that stops at
        # its budget, or a noisy one, never replaces it with something slower
        previous = type(start).from_dict(previous)
        prev_ms = measure(previous) if previous != best else ms
        trials.append({"knob": "previous", "config": previous.to_dict(), "ms": _finite(prev_ms)})
        if prev_ms < ms:
            print(f"  the previous entry stays: {prev_ms:.4f} ms (search: {ms:.4f})")
            best, ms = previous, prev_ms
    if heuristic is not None:
        start_ms = measure(heuristic)
        trials.append({"knob": "heuristic", "config": heuristic.to_dict(), "ms": _finite(start_ms)})
        if start_ms < ms:
            best, ms = heuristic, start_ms
    seeded_from = seeded_from if best != heuristic else None
    table.put(section, key, tokens, best, ms, start_ms, trials, seeded_from)
    print(f"  best {ms:.4f} ms (heuristic {start_ms:.4f}): {best.to_dict()}")


def _refine(args, table: TableFile, section: str, key: str, tokens: int, guess, variants_of, measure,
            deadline: float) -> None:
    """--refine of one bucket: from this table's measured entry (else --seed-from's), over
    variants_of(start) (none with --no-search), the heuristic timed beside; skipped without one."""
    entry, seeded_from = table.start_entry(section, key, tokens)
    if entry is None:
        print(f"[{section} {key} T={tokens}] no measured entry to refine")
        return
    start = type(guess).from_dict(entry)
    variants = [] if args.no_search else variants_of(start)
    _search(table, section, key, tokens, start, variants, measure, deadline, heuristic=guess, seeded_from=seeded_from)


def tune_moe(args, table: TableFile, deadline: float, make_experts, run, heuristic, variants_for,
             refine_for=None) -> None:
    """Every MoE shape and token count: make_experts(shape) -> the experts' tensors (made on the
    GPU), run(x, experts, topk_weights, topk_ids, out, config) one call, variants_for(t, e, k) the
    knobs to search from heuristic(t, e, h, i, k).
    --refine: start from the table's measured entry of each bucket instead (buckets without one are
    skipped) and search only its GEMMs' knobs, refine_for(entry) (default: variants_for's "w13." and
    "w2." knobs): a new knob or a re-check without re-running the whole descent. With --seed-from,
    a bucket without one starts from that GPU's entry; --no-search times only the start and the
    heuristic (a table for a GPU of the same architecture, in a few seconds a bucket)."""
    import moe_kernels as mk

    for model, tp, (e, h, i, k) in [] if args.no_moe else moe_shapes(args.models, args.tps):
        shape = mk.Shape(f"{model}/tp{tp}", e, h, i, k)
        experts = make_experts(shape)
        for t in args.tokens_list:
            if time.time() > deadline:
                break
            x, tw, ids = mk.make_routing(shape, t, DEVICE, seed=t)
            out = torch.empty_like(x)
            measure = lambda c: try_time(lambda: run(x, experts, tw, ids, out, c), t <= TUNE_GRAPH_MAX_TOKENS)
            key, guess = tables.moe_key(e, h, i, k), heuristic(t, e, h, i, k)
            if not args.refine:
                _search(table, "moe", key, t, guess, variants_for(t, e, k), measure, deadline)
                continue
            gemm_knobs = refine_for or (lambda c: [v for v in variants_for(t, e, k)
                                                   if v[0].startswith(("w13.", "w2."))])
            _refine(args, table, "moe", key, t, guess, gemm_knobs, measure, deadline)
        experts = None  # freed before the next shape's are made
        torch.cuda.empty_cache()


def tune_dense(args, table: TableFile, deadline: float, make_weight, run, heuristic, knobs: dict, impls) -> None:
    """Every dense (N, K) and token count (with --dense): make_weight(n, k, generator) -> the
    weight's tensors, run(x, weight, out, config) one call."""
    if not args.dense:
        return
    for model, tp, (n, k) in dense_shapes(args.models, args.tps):
        g = torch.Generator(device=DEVICE).manual_seed(n + k)
        weight = make_weight(n, k, g)
        for t in args.tokens_list:
            if time.time() > deadline:
                break
            x = torch.randn(t, k, generator=g, device=DEVICE).to(DTYPE[DEVICE])
            out = torch.empty(t, n, device=DEVICE, dtype=x.dtype)
            measure = lambda c: try_time(lambda: run(x, weight, out, c), t <= TUNE_GRAPH_MAX_TOKENS)
            key, guess = tables.dense_key(n, k), heuristic(t, n, k)
            variants = [("block_m", lambda c: [dataclasses.replace(c, block_m=bm) for bm in BLOCK_M_VALUES])]
            variants += gemm_variants("", knobs)
            variants.append(("impl", lambda c: [dataclasses.replace(c, impl=v) for v in impls]))
            if args.refine:  # all knobs but block_m
                _refine(args, table, "dense", key, t, guess, lambda c: variants[1:], measure, deadline)
            else:
                _search(table, "dense", key, t, guess, variants, measure, deadline)


def direct_variants(tokens: int, top_k: int) -> list:
    """Tiny batches: with or without the MoE's alignment launch."""
    if tokens * top_k > 64:
        return []
    return [("direct", lambda c: [dataclasses.replace(c, direct=v) for v in (False, True)])]


# ---------------------------------------------------------------- command line


def parse_args(doc: str, fmt: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--models", default="qwen3,minimax", help="presets (qwen3 and minimax for short) or model "
                        "directories, comma-separated")
    parser.add_argument("--tp", default="1")
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--dense", action="store_true", help="also tune the dense GEMM (attention projections)")
    parser.add_argument("--no-moe", action="store_true", help="skip the MoE shapes")
    parser.add_argument("--budget-s", type=float, default=540.0)
    parser.add_argument("--guess", action="store_true", help="write the heuristic guesses (no GPU needed)")
    parser.add_argument("--refine", action="store_true", help="start each bucket from the table's measured entry "
                        "and search only its GEMMs' knobs (the dense GEMM: all but block_m)")
    parser.add_argument("--seed-from", default=None, metavar="GPU", help="with --refine: buckets this table has "
                        "not measured start from that GPU's table (h100: a GPU of the same architecture)")
    parser.add_argument("--no-search", action="store_true", help="with --refine: time only each bucket's start "
                        "and the heuristic, and keep the faster")
    parser.add_argument("--gpu", default=None, help="the table's GPU tag (h100, h200, ...); default: this GPU's")
    parser.add_argument("--out", default=None, help=f"default: {fmt}_<gpu>.json in the first folder of "
                        f"$TENK_KERNEL_CONFIGS, else src/tenk/kernels/configs/{fmt}_<gpu>.json")
    parser.add_argument("--trials", default=None, help="also write every candidate's time to this JSON")
    args = parser.parse_args()
    if (args.seed_from or args.no_search) and not args.refine:
        parser.error("--seed-from and --no-search go with --refine")
    args.models = args.models.split(",")
    args.tps = [int(t) for t in args.tp.split(",")]
    args.tokens_list = [int(t) for t in args.tokens.split(",")]
    return args


def default_out(gpu: str, fmt: str) -> Path:
    """Where a tuning run writes: the first folder of $TENK_KERNEL_CONFIGS (which the kernels read
    before the package's tables), else the package's table itself."""
    folders = tables.user_table_folders()
    return folders[0] / tables.table_path(gpu, fmt).name if folders else tables.table_path(gpu, fmt)


def main(doc: str, fmt: str, heuristic_moe, heuristic_dense, tune) -> int:
    """Shared entry point: --guess writes the heuristics' table; otherwise tune(args, table,
    deadline) measures on this GPU."""
    args = parse_args(doc, fmt)
    if args.guess:
        gpu = args.gpu or "h100"
        path = Path(args.out) if args.out else tables.table_path(gpu, fmt)
        write_guesses(path, gpu, fmt, heuristic_moe, heuristic_dense, args.models, sorted(set(args.tps) | set(GUESS_TPS)))
        return 0
    seed = None
    if args.seed_from:
        seed_path = tables.find_table(args.seed_from, fmt)
        if seed_path is None:
            print(f"--seed-from {args.seed_from}: no {fmt} table for that GPU", file=sys.stderr)
            return 2
        seed = (args.seed_from, seed_path)
    if not torch.cuda.is_available():
        print(f"tune_{fmt}.py needs a CUDA GPU (or --guess)", file=sys.stderr)
        return 2
    gpu = args.gpu or tables.gpu_tag()
    path = Path(args.out) if args.out else default_out(gpu, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = TableFile(path, tables.table_path(gpu, fmt), gpu, fmt, Path(args.trials) if args.trials else None, seed)
    deadline = time.time() + args.budget_s
    tune(args, table, deadline)
    print(f"wrote {path}" + (" (stopped at the time budget)" if time.time() > deadline else ""))
    return 0
