"""The benchmark scripts a GPU session runs (headline, step profile, roofline, load RSS) work end to
end on CPU with a tiny preset, so device time is never lost to their plumbing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _run(args: list[str], timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_headline_serves_sweeps_exports_and_reports(tmp_path):
    """Two configurations (one with two data-parallel replicas) served, swept over HTTP, exported
    as tenk.bench/1 files that tenk report draws."""
    out = tmp_path / "headline.json"
    _run([str(BENCH / "headline.py"), "--preset", "tiny-moe",
          "--config", "nvfp4:gpus=0:--quantization=nvfp4:--kv-cache-dtype=fp8",
          "--config", "dp2:gpus=1,2:--quantization=none:--dp=2:c=2",
          "--concurrency", "1,2", "--input-len", "16", "--output-len", "8", "--min-prompts", "4", "--warmup", "1",
          "--max-num-seqs", "8", "--out", str(out)], timeout=400)
    report = json.loads(out.read_text())
    by_name = {c["name"]: c for c in report["configs"]}
    assert set(by_name) == {"nvfp4", "dp2"} and all("error" not in c for c in by_name.values())
    assert report["unfinished"] == []
    nv = by_name["nvfp4"]
    assert [lv["concurrency"] for lv in nv["bench"]["levels"]] == [1, 2]
    assert [lv["concurrency"] for lv in by_name["dp2"]["bench"]["levels"]] == [2]
    assert nv["summary"]["failed_total"] == 0 and nv["summary"]["peak"]["output_tok_s"] > 0
    assert "float8_e4m3fn" in nv["kv_cache_log"]
    for c in report["configs"]:  # every request timed: a TTFT and TPOT each
        for lv in c["bench"]["levels"]:
            assert lv["ttft_ms"]["n"] == lv["completed"] == lv["tpot_ms"]["n"]
    exported = json.loads((tmp_path / "headline_dp2.json").read_text())
    assert exported["schema"].startswith("tenk.bench/") and exported["config"]["labels"]["layout"] == "TP=1 DP=2"
    _run(["-m", "tenk.cli.main", "report", str(tmp_path / "headline_nvfp4.json"), str(tmp_path / "headline_dp2.json"),
          "--out", str(tmp_path / "report")])
    assert (tmp_path / "report" / "charts" / "throughput_vs_concurrency.png").exists()


def test_headline_writes_each_configuration_as_it_finishes(tmp_path):
    """A run cut off by a time limit keeps the configurations it finished: the JSON and their
    exports are written after each one, not only at the end. The second configuration is two
    separate servers swept by one bench (servers=2)."""
    import time

    out = tmp_path / "hl.json"
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "headline.py"), "--preset", "tiny-moe", "--config", "a:gpus=0",
         "--config", "b:gpus=0,1:servers=2:c=1,2", "--concurrency", "1", "--input-len", "8", "--output-len", "4",
         "--min-prompts", "2", "--warmup", "1", "--max-num-seqs", "4", "--out", str(out)],
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "hl_a.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        early = json.loads(out.read_text())  # b shares GPU 0, so it starts only now
        assert [c["name"] for c in early["configs"]] == ["a"] and early["unfinished"] == ["b"]
        assert early["peaks_output_tok_s"]["a"] > 0
        assert proc.wait(240) == 0, proc.stdout.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    final = json.loads(out.read_text())
    assert [c["name"] for c in final["configs"]] == ["a", "b"] and final["unfinished"] == []
    b = final["configs"][1]  # two separate servers, one bench over both
    assert b["servers"] == 2 and len(b["bench"]["config"]["urls"]) == 2 and b["summary"]["failed_total"] == 0
    assert json.loads((tmp_path / "hl_b.json").read_text())["config"]["labels"]["layout"] == "TP=1 DP=2 (2 servers)"


def test_step_profile_and_roofline(tmp_path):
    _run([str(BENCH / "step_profile.py"), "--preset", "tiny-moe", "--batch", "4", "--context", "16", "--steps", "3",
          "--profile-steps", "1", "--out", str(tmp_path)])
    prof = tmp_path / "step_profile_tiny-moe_none_auto.json"
    row = json.loads(prof.read_text())["batches"][0]
    assert row["running"] == 4 and row["step_ms"] > 0 and row["alloc_retries_per_step"] == 0
    host = row["host_ms"]  # on CPU the launch runs the forward itself: most of the step
    assert set(host) == {"schedule", "launch", "wait", "process"} and all(v >= 0 for v in host.values())
    assert host["launch"] > host["schedule"] and sum(host.values()) <= row["step_ms"] * 1.05
    ops = row["top_host_ops"]  # the CPU forward's own ops, by self time
    assert ops and all(ms > 0 and n > 0 for _, ms, n in ops) and any(name.startswith("aten::") for name, _, _ in ops)
    out = _run([str(BENCH / "roofline.py"), str(prof), "--out", str(tmp_path / "roof.json")])
    roof = json.loads((tmp_path / "roof.json").read_text())["batches"][0]
    assert roof["bytes"]["total"] == sum(v for k, v in roof["bytes"].items() if k != "total")
    assert roof["ms"]["roofline"] > 0 and "B=4" in out


def test_load_rss_writes_then_measures(tmp_path):
    out = tmp_path / "rss.json"
    _run([str(BENCH / "load_rss.py"), "--preset", "tiny-moe", "--num-layers", "2", "--quantization", "nvfp4",
          "--dir", str(tmp_path / "ckpt"), "--device", "cpu", "--out", str(out)])
    r = json.loads(out.read_text())
    assert (tmp_path / "ckpt" / "hf_quant_config.json").exists()
    assert r["checkpoint_bytes"] > 0 and r["peak_rss_bytes"] >= r["rss_before_load_bytes"] > 0


def test_api_ceiling_sweeps_the_api_process_over_the_synthetic_engine(tmp_path):
    """The server runs its real API process over TENK_SYNTHETIC_ENGINE; every request streams
    its max_tokens, and the API process's CPU is accounted per streamed token."""
    out = tmp_path / "api.json"
    text = _run([str(BENCH / "api_ceiling.py"), "--step-ms", "5", "--concurrency", "2,8", "--input-len", "16",
                 "--output-len", "12", "--dp", "2", "--out", str(out)], timeout=180)
    assert "the engines could stream" in text
    res = json.loads(out.read_text())
    assert [lv["concurrency"] for lv in res["levels"]] == [2, 8] and res["dp"] == 2
    for lv in res["levels"]:
        assert lv["failed"] == 0 and lv["num_prompts"] == 2 * lv["concurrency"]
        assert 0 < lv["output_tok_s"] <= lv["engine_tok_s"] * 1.05  # c sequences over both replicas, one token a step
        assert lv["api_cpu_s"] > 0 and lv["api_cpu_us_per_token"] > 0


def test_all_reduce_benchmark_plumbing(tmp_path):
    """On CPU the all-reduce benchmark runs gloo between two spawned ranks (the GPU run adds NCCL
    in CUDA graphs and the symmetric-memory one-shot path)."""
    out = tmp_path / "ar.json"
    _run([str(BENCH / "all_reduce.py"), "--ranks", "2", "--hidden", "64", "--tokens", "1,4", "--calls", "2",
          "--out", str(out)], timeout=120)
    rows = json.loads(out.read_text())["rows"]
    assert [r["tokens"] for r in rows] == [1, 4] and all(r["gloo_us"] > 0 for r in rows)


def test_headline_refuses_servers_that_do_not_divide_the_gpus(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "headline.py"), "--config", "x:gpus=0,1,2:servers=2",
                           "--out", str(tmp_path / "hl.json")], capture_output=True, text=True, timeout=60, env=ENV, cwd=ROOT)
    assert proc.returncode != 0 and "servers=2 must be >= 1 and divide its 3 GPUs" in proc.stderr
    assert not (tmp_path / "hl.json").exists()


def test_headline_layout_reads_reserve_and_free_from_the_start_up_log():
    """A GPU server's start-up lines give the report's whole memory bar: weights, KV cache, and
    from "GPU memory after start-up" the reserve and what is left free."""
    sys.path.insert(0, str(BENCH))
    from headline import _layout

    log = ("04:10:01 INFO tenk.engine.model_runner: weights (nvfp4, dummy): bfloat16 2.00 GiB, nvfp4 15.00 GiB\n"
           "04:10:20 INFO tenk.engine.llm_engine: KV cache: 1000000 tokens in float8_e4m3fn (62500 blocks of 16)\n"
           "04:10:23 INFO tenk.engine.llm_engine: GPU memory after start-up: 70.00 GiB in use of 79.19 GiB\n")
    cfg = {"server_log_head": log, "serve_command": ["serve", "qwen3-30b-a3b", "--tp", "2"], "servers": 1}
    layout = _layout(cfg, "qwen3-30b-a3b", "NVIDIA H100 80GB HBM3")
    gib = 1 << 30
    assert layout["weights_bytes_per_gpu"] == 17 * gib and layout["tp"] == 2
    assert layout["gpu_memory_bytes"] == int(79.19 * gib)
    assert layout["reserve_bytes_per_gpu"] == int(70 * gib - 17 * gib - layout["kv_bytes_per_gpu"]) > 0
    old = _layout({**cfg, "server_log_head": log.rsplit("\n", 2)[0]}, "qwen3-30b-a3b", "H100")
    assert "gpu_memory_bytes" not in old and "reserve_bytes_per_gpu" not in old  # logs from before the line
