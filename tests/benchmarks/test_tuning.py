"""The kernel tuners' shared parts (benchmarks/tuning.py) on CPU: the coordinate descent keeps the
best of each knob in turn, a table being rewritten keeps the entries it does not measure, and
`--guess` writes tables every entry of which the kernels' config loaders accept."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest

from tests.benchmarks.test_serving_scripts import BENCH, _run

sys.path.insert(0, str(BENCH))
import tuning  # noqa: E402

from tenk.kernels.configs import fp8, nvfp4  # noqa: E402


@dataclasses.dataclass(frozen=True)
class _Cfg:
    a: int = 1
    b: int = 1

    def to_dict(self):
        return dataclasses.asdict(self)


def test_descend_takes_each_knobs_best_in_turn():
    cost = lambda c: (c.a - 3) ** 2 + (c.b - 2) ** 2 + 0.5 * c.a * c.b
    seen = []
    measure = lambda c: seen.append(c) or cost(c)
    knobs = {"a": [1, 2, 3, 4], "b": [1, 2, 3]}
    variants = [(k, lambda c, k=k: [dataclasses.replace(c, **{k: v}) for v in knobs[k]]) for k in knobs]
    best, ms, start_ms = tuning.descend(_Cfg(), variants, measure, time.time() + 60)
    # a first with b = 1 (a = 3: 2.5 against 3.0 at a = 2), then b with a = 3 (b = 1 stays: 3.0 at b = 2)
    assert best == _Cfg(3, 1) and ms == cost(_Cfg(3, 1)) == 2.5 and start_ms == cost(_Cfg())
    assert len(seen) == len(set(seen)) == 1 + 3 + 2  # the start once, no candidate timed twice
    best, _, _ = tuning.descend(_Cfg(), variants, measure, time.time() - 1)  # past the budget: the start
    assert best == _Cfg()
    trials = []
    inf_at_4 = lambda c: float("inf") if c.a == 4 else cost(c)  # a candidate that did not compile
    tuning.descend(_Cfg(), variants, inf_at_4, time.time() + 60, trials)
    assert [t["knob"] for t in trials] == ["start", "a", "a", "a", "b", "b"]
    assert trials[3] == {"knob": "a", "config": {"a": 4, "b": 1}, "ms": None} and trials[0]["ms"] == cost(_Cfg())


def test_descend_restarts_from_each_block_m():
    """A leading block_m knob seeds one descent per value: the best b differs per block (b = a is
    best), which one descent from a = 1 does not find."""
    cost = lambda c: (c.b - c.a) ** 2 + 10.0 / c.a
    seen = []
    measure = lambda c: seen.append(c) or cost(c)
    variants = [("block_m", lambda c: [dataclasses.replace(c, a=v) for v in (1, 2, 4)]),
                ("b", lambda c: [dataclasses.replace(c, b=v) for v in (1, 2, 4)])]
    trials = []
    best, ms, start_ms = tuning.descend(_Cfg(), variants, measure, time.time() + 60, trials)
    assert best == _Cfg(4, 4) and ms == 2.5 and start_ms == cost(_Cfg())
    # plain coordinate descent from (1, 1): a = 2 (6.0) beats a = 4 (11.5) at b = 1, then b = 2: 5.0
    assert tuning.descend(_Cfg(), [("a", variants[0][1]), variants[1]], measure, time.time() + 60)[:2] == (_Cfg(2, 2), 5)
    assert [t["knob"] for t in trials] == ["start", "b", "b", "block_m", "b", "b", "block_m", "b", "b"]


def test_gemm_variants_change_one_knob_of_one_gemm():
    cfg = fp8.heuristic_moe(16, 256, 3072, 1536, 8)
    variants = dict(tuning.gemm_variants("w2", {"tile": [(128, 8)], "split_k": [4]}))
    (tile,) = variants["w2.tile"](cfg)
    assert (tile.w2.block_n, tile.w2.num_warps) == (128, 8) and tile.w13 == cfg.w13
    (whole,) = dict(tuning.gemm_variants("w2", {"whole_tile": [dict(block_n=128, num_warps=4, block_k=64,
                                                                    num_stages=3)]}))["w2.whole_tile"](cfg)
    assert (whole.w2.block_n, whole.w2.num_warps, whole.w2.block_k, whole.w2.num_stages) == (128, 4, 64, 3)
    assert whole.w13 == cfg.w13 and whole.w2.split_k == cfg.w2.split_k
    (split,) = variants["w2.split_k"](cfg)
    assert split.w2.split_k == 4 and dataclasses.replace(split.w2, split_k=cfg.w2.split_k) == cfg.w2
    (bm32,) = [c for c in tuning.block_m_variants()[0][1](cfg) if c.block_m == 32]
    assert bm32.w13.block_m == bm32.w2.block_m == 32  # both GEMMs share the token blocks
    assert tuning.block_m_values(256, 128, 8) == (16, 32, 64)  # 16 pairs per expert
    assert tuning.block_m_values(4096, 128, 8) == (32, 64, 128, 256)  # 256 pairs per expert
    assert tuning.block_m_values(1, 128, 8) == (16,)


def test_wgmma_candidates_are_valid_warp_group_configs():
    """tune_nvfp4's wgmma candidates from a decode-style winner (16-token blocks, 2-warp tiles, split-K,
    direct): each a valid wgmma MoE config, at the winner's block and at 128; invalid tile knobs of
    the wgmma descent are skipped rather than raised."""
    import tune_nvfp4

    start = nvfp4.heuristic_moe(1, 128, 2048, 768, 8)
    assert start.direct and start.w13.split_k > 1
    cands = tune_nvfp4.wgmma_variants(start)
    assert len(cands) == 2 * len(tune_nvfp4.WGMMA_TILES)
    assert {c.block_m for c in cands} == {16, 128}
    for c in cands:
        assert c.impl == "wgmma" and not c.direct and c.w13.split_k == c.w2.split_k == 1
        assert not (c.w13.narrow or c.w2.narrow or c.w13.prefetch or c.w2.prefetch)  # Triton-kernel knobs
        assert nvfp4.Nvfp4MoeConfig.from_dict(c.to_dict()) == c
    tiles = dict(tuning.gemm_variants("w13", {"tile": [(32, 2), (64, 4), (128, 8)]}))["w13.tile"](cands[0])
    assert [(t.w13.block_n, t.w13.num_warps) for t in tiles] == [(64, 4), (128, 8)]  # 32 rows on 2 warps refused


def test_shapes_come_from_the_models_configs():
    """--models takes any preset or model directory: its experts, widths per rank and top-k, its
    attention projections, and for dense models the MLP too."""
    assert [s for _, _, s in tuning.moe_shapes(["mixtral-8x7b", "llama-3-8b"], [1, 2])] == [
        (8, 4096, 14336, 2), (8, 4096, 7168, 2)]  # fmt: skip
    llama = [s for _, tp, s in tuning.dense_shapes(["llama-3-8b"], [1, 2]) if tp == 2]
    assert llama == [(16 * 128 + 2 * 4 * 128, 4096), (4096, 2048), (14336, 4096), (4096, 7168)]
    qwen = [s for _, _, s in tuning.dense_shapes(["qwen3"], [1])]
    assert qwen == [(5120, 2048), (2048, 4096)]  # 32 + 2 x 4 heads of 128; no MLP (MoE)


def test_table_file_keeps_unmeasured_entries(tmp_path):
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps({"moe": {"k": {"1": {"old": 1}, "16": {"old": 16}}}, "dense": {}}))
    table = tuning.TableFile(tmp_path / "out.json", shipped, "h100", "fp8")
    cfg = fp8.heuristic_moe(1, 256, 3072, 1536, 8)
    table.put("moe", "k", 1, cfg, 0.02, 0.03, [{"knob": "start", "config": cfg.to_dict(), "ms": 0.03}])
    data = json.loads((tmp_path / "out.json").read_text())
    assert not (tmp_path / "trials.json").exists()  # kept only when asked for
    assert data["moe"]["k"]["16"] == {"old": 16} and not data["tuned"]  # bucket 16 is still a guess
    assert fp8.Fp8MoeConfig.from_dict(data["moe"]["k"]["1"]) == cfg
    assert (data["moe"]["k"]["1"]["ms"], data["moe"]["k"]["1"]["heuristic_ms"]) == (0.02, 0.03)
    table.put("moe", "k", 16, cfg, 0.05, 0.05)
    assert json.loads((tmp_path / "out.json").read_text())["tuned"]
    logged = tuning.TableFile(tmp_path / "out.json", shipped, "h100", "fp8", tmp_path / "trials.json")
    logged.put("moe", "k", 1, cfg, 0.02, 0.03, [{"knob": "start", "config": cfg.to_dict(), "ms": 0.03}])
    assert json.loads((tmp_path / "trials.json").read_text())["moe"]["k"]["1"][0]["ms"] == 0.03


def test_search_keeps_a_measured_entry_the_new_search_does_not_beat(tmp_path):
    """A re-run times the bucket's earlier winner in the same run: a slower search (stopped at its
    budget, or noisy) does not replace it; a faster one does."""
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps({"moe": {}, "dense": {}}))
    table = tuning.TableFile(tmp_path / "out.json", shipped, "h100", "fp8")
    start = fp8.heuristic_moe(16, 256, 3072, 1536, 8)
    old = dataclasses.replace(start, w2=dataclasses.replace(start.w2, num_stages=start.w2.num_stages + 1))
    table.put("moe", "k", 16, old, 0.5, 0.6)
    cost = {start: 0.6, old: 0.5}
    variants = [("w2.num_stages", lambda c: [c])]  # nothing new to try: the search ends at the start
    tuning._search(table, "moe", "k", 16, start, variants, lambda c: cost[c], time.time() + 60)
    entry = json.loads((tmp_path / "out.json").read_text())["moe"]["k"]["16"]
    assert fp8.Fp8MoeConfig.from_dict(entry) == old and entry["ms"] == 0.5 and entry["heuristic_ms"] == 0.6
    cost[old] = 0.7  # measured slower this time: the search's winner replaces it
    tuning._search(table, "moe", "k", 16, start, variants, lambda c: cost[c], time.time() + 60)
    entry = json.loads((tmp_path / "out.json").read_text())["moe"]["k"]["16"]
    assert fp8.Fp8MoeConfig.from_dict(entry) == start and entry["ms"] == 0.6
    assert table.measured("moe", "k", 1) is None


def test_refine_seeded_from_another_gpus_table(tmp_path, monkeypatch):
    """--refine --seed-from h100: a bucket this table has not measured starts from the h100 table's
    winner, which is timed here beside the heuristic (--no-search: only those two); the entry says
    where it started unless the heuristic won, and a bucket the table did measure starts there."""
    shipped = tmp_path / "none.json"
    seed_path = tmp_path / "seed.json"
    key = "e8_h128_i64_top2"
    heur = lambda t: fp8.heuristic_moe(t, 8, 128, 64, 2)
    h100 = {t: dataclasses.replace(heur(t), w2=dataclasses.replace(heur(t).w2, num_stages=5)) for t in (1, 16, 64)}
    seed_path.write_text(json.dumps({"moe": {key: {str(t): {**c.to_dict(), "ms": 0.1} for t, c in h100.items()}},
                                     "dense": {}}))  # fmt: skip
    table = tuning.TableFile(tmp_path / "out.json", shipped, "h200", "fp8", tmp_path / "trials.json",
                             ("h100", seed_path))  # fmt: skip
    own = dataclasses.replace(heur(64), w13=dataclasses.replace(heur(64).w13, num_stages=5))
    table.put("moe", key, 64, own, 0.2, 0.3)  # measured on this GPU already: the seed is not used
    timed = []

    def run(x, w, tw, ids, out, c):
        timed.append((x.shape[0], c))

    def fake_time(fn, graph):  # 5 stages (the h100 winners, `own`) beat the rest, but for 16 tokens the heuristic
        fn()
        t, c = timed[-1]
        return 1.0 if (t, c) == (16, heur(16)) else 2.0 if 5 in (c.w2.num_stages, c.w13.num_stages) else 3.0

    tiny = dataclasses.replace(tuning.model_config("tiny-moe"), hidden_size=128, moe_intermediate_size=64)
    monkeypatch.setattr(tuning, "DEVICE", "cpu")
    monkeypatch.setattr(tuning, "model_config", lambda name: tiny)
    monkeypatch.setattr(tuning, "try_time", fake_time)
    w2_stages = lambda t, e, k: [("w2.num_stages", lambda c: [dataclasses.replace(c, w2=dataclasses.replace(
        c.w2, num_stages=3))])]  # fmt: skip
    args = argparse.Namespace(models=["tiny"], tps=[1], tokens_list=[1, 16, 64, 256], dense=False, no_moe=False,
                              refine=True, no_search=True)
    tuning.tune_moe(args, table, time.time() + 60, lambda shape: None, run, lambda t, e, h, i, k: heur(t), w2_stages)
    data = json.loads((tmp_path / "out.json").read_text())["moe"][key]
    assert "256" not in data  # neither table measured it: skipped
    assert fp8.Fp8MoeConfig.from_dict(data["1"]) == h100[1] and data["1"]["seeded_from"] == "h100"
    assert (data["1"]["ms"], data["1"]["heuristic_ms"]) == (2.0, 3.0)
    assert fp8.Fp8MoeConfig.from_dict(data["16"]) == heur(16) and "seeded_from" not in data["16"]
    assert fp8.Fp8MoeConfig.from_dict(data["64"]) == own and "seeded_from" not in data["64"]
    # --no-search: each bucket timed its start and the heuristic
    trials = json.loads((tmp_path / "trials.json").read_text())["moe"][key]
    assert [t["knob"] for t in trials["1"]] == ["start", "heuristic"]
    assert [t["knob"] for t in trials["64"]] == ["start", "previous", "heuristic"]  # previous: the start itself
    assert trials["64"][0]["config"] == own.to_dict()
    args.no_search, args.tokens_list = False, [1]  # the refine's knobs too: w2 on 3 stages is tried from the seed
    timed.clear()
    tuning.tune_moe(args, table, time.time() + 60, lambda shape: None, run, lambda t, e, h, i, k: heur(t), w2_stages)
    assert timed[0] == (1, h100[1]) and (1, dataclasses.replace(h100[1], w2=dataclasses.replace(h100[1].w2,
                                                                                            num_stages=3))) in timed


def test_seed_options_refuse_bad_input():
    """--seed-from names a GPU with a table and goes with --refine, as does --no-search: otherwise
    the tuner stops at once with a clear message (before it looks for a GPU)."""
    import subprocess

    from tests.benchmarks.test_serving_scripts import ENV, ROOT

    def run(*args):
        proc = subprocess.run([sys.executable, str(BENCH / "tune_fp8.py"), *args], capture_output=True, text=True,
                              timeout=120, env=ENV, cwd=ROOT)
        return proc.returncode, proc.stderr

    rc, err = run("--refine", "--seed-from", "nosuchgpu")
    assert rc == 2 and "--seed-from nosuchgpu: no fp8 table for that GPU" in err
    for args in (["--seed-from", "h100"], ["--no-search"]):
        rc, err = run(*args)
        assert rc == 2 and "--seed-from and --no-search go with --refine" in err, args


@pytest.mark.parametrize(("script", "fmt", "moe_cls", "dense_cls"), [
    ("tune_fp8.py", "fp8", fp8.Fp8MoeConfig, fp8.Fp8Config),
    ("tune_nvfp4.py", "nvfp4", nvfp4.Nvfp4MoeConfig, nvfp4.Nvfp4Config)])  # fmt: skip
def test_guess_tables_cover_the_shipped_shapes(tmp_path, script, fmt, moe_cls, dense_cls):
    out = tmp_path / "table.json"
    _run([str(BENCH / script), "--guess", "--gpu", "h100", "--out", str(out)], timeout=120)
    guess = json.loads(out.read_text())
    shipped = json.loads(nvfp4.table_path("h100", fmt).read_text())
    assert not guess["tuned"]
    assert set(guess["moe"]) == set(shipped["moe"]) and set(guess["dense"]) == set(shipped["dense"])
    for entries in guess["moe"].values():
        assert set(entries) == {str(b) for b in nvfp4.M_BUCKETS}
        for entry in entries.values():
            moe_cls.from_dict(entry)
    for entries in guess["dense"].values():
        for entry in entries.values():
            dense_cls.from_dict(entry)
    assert Path(out).read_text().endswith("\n")
    # rewriting over a table keeps its measured entries and refreshes the guesses
    key = sorted(guess["moe"])[0]
    guess["moe"][key]["16"] = {**guess["moe"][key]["16"], "ms": 0.1, "heuristic_ms": 0.2}
    guess["moe"][key]["64"]["w13"]["num_stages"] = 7  # a stale guess
    out.write_text(json.dumps(guess))
    _run([str(BENCH / script), "--guess", "--gpu", "h100", "--out", str(out)], timeout=120)
    again = json.loads(out.read_text())
    assert again["moe"][key]["16"]["ms"] == 0.1 and again["moe"][key]["64"]["w13"]["num_stages"] != 7
    assert not again["tuned"] and "measured" in again["note"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
def test_sweeps_run_end_to_end_on_cpu(tmp_path, monkeypatch, fmt):
    """tune_nvfp4.tune / tune_fp8.tune over a tiny MoE and dense shape (the Triton interpreter; each
    candidate timed by one eager call), so a GPU run does not fail on the sweeps' plumbing: every
    entry lands in the table, a valid config, with the heuristic's time beside the winner's."""
    import importlib

    from tenk.kernels.interpret import triton_interpreter

    module = importlib.import_module(f"tune_{fmt}")
    monkeypatch.setattr(tuning, "DEVICE", "cpu")
    h, i = (128, 64) if fmt == "nvfp4" else (256, 128)  # FP8: whole 128 x 128 scale blocks
    tiny = tuning.model_config("tiny-moe")  # 8 experts, top-2, 4 / 2 heads
    tiny = dataclasses.replace(tiny, hidden_size=h, moe_intermediate_size=i, head_dim=h // 4)
    monkeypatch.setattr(tuning, "model_config", lambda name: tiny)
    monkeypatch.setattr(tuning, "try_time", lambda fn, graph: _eager_ms(fn))
    # one or two values per knob: the interpreter takes seconds per candidate
    k_step = "block_kq" if fmt == "nvfp4" else "block_k"
    monkeypatch.setattr(module, "GEMM_KNOBS", {"tile": [(64, 4)], k_step: [16 if fmt == "nvfp4" else 64],
                                               "split_k": [1, 2]})  # fmt: skip
    if fmt == "nvfp4":  # a prefetching config is a valid candidate (it prefetches only under PDL, on a GPU)
        monkeypatch.setattr(module, "MOE_KNOBS", {"prefetch": [0, 4096]})
    block_m_variants = tuning.block_m_variants
    monkeypatch.setattr(tuning, "block_m_variants", lambda values=None: block_m_variants((16, 32)))
    monkeypatch.setattr(tuning, "BLOCK_M_VALUES", (16, 32))  # the dense GEMM's descents
    # 48 tokens, top-2 of 8 experts: 12 pairs per expert, so the 32-pair blocks hold padding (the
    # interpreter's time grows with the programs, so the batch is no larger than that needs)
    args = argparse.Namespace(models=["tiny"], tps=[1], tokens_list=[1, 48], dense=True, no_moe=False,
                              refine=False, no_search=False)
    table = tuning.TableFile(tmp_path / "table.json", tmp_path / "none.json", "h100", fmt, tmp_path / "trials.json")
    with triton_interpreter():
        module.tune(args, table, time.time() + 600)
    data = json.loads((tmp_path / "table.json").read_text())
    moe_cls, dense_cls = (fp8.Fp8MoeConfig, fp8.Fp8Config) if fmt == "fp8" else (nvfp4.Nvfp4MoeConfig, nvfp4.Nvfp4Config)
    key = f"e8_h{h}_i{i}_top2"
    assert set(data["moe"]) == {key} and set(data["moe"][key]) == {"1", "48"}
    assert set(data["dense"]) == {f"{2 * h}x{h}", f"{h}x{h}"}  # q|k|v (4 + 2 x 2 heads of h / 4) and o
    for section, cls in (("moe", moe_cls), ("dense", dense_cls)):
        for entries in data[section].values():
            for entry in entries.values():
                cls.from_dict(entry)
                assert 0 < entry["ms"] <= entry["heuristic_ms"]
    assert data["tuned"]
    trials = json.loads((tmp_path / "trials.json").read_text())["moe"][key]
    impls = {t["config"].get("impl", "fused") for t in trials["48"] if t["ms"] is not None}
    assert impls == ({"fused", "dequant"} if fmt == "nvfp4" else {"fused"})
    # --refine: from the entry just written, only its GEMMs' knobs, the heuristic timed beside
    entry = data["moe"][key]["48"]
    args.refine, args.tokens_list, args.dense = True, [48], False
    with triton_interpreter():
        module.tune(args, table, time.time() + 600)
    refined = json.loads((tmp_path / "table.json").read_text())["moe"][key]["48"]
    assert 0 < refined["ms"] <= refined["heuristic_ms"]
    trials = json.loads((tmp_path / "trials.json").read_text())["moe"][key]["48"]
    assert trials[0]["config"] == {k: v for k, v in entry.items() if k not in ("ms", "heuristic_ms")}
    assert {t["knob"].split(".")[0] for t in trials[1:-1]} <= {"w13", "w2", "previous"}
    assert trials[-1]["knob"] == "heuristic"

def _eager_ms(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3

