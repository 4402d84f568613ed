"""Headline: a preset with random weights served by `tenk serve` and swept by `tenk bench` over
HTTP, per configuration (quantization, KV dtype, layout), plus transformers' continuous batching
on the same card as the peer (issue 8).

    python benchmarks/headline.py --preset qwen3-30b-a3b \
        --config nvfp4:gpus=0:--quantization=nvfp4:--kv-cache-dtype=fp8 \
        --config bf16:gpus=1:--quantization=none \
        --peer-gpu 1 --out $OUT/headline_h100.json

A --config is NAME:gpus=LIST[:c=LEVELS][:servers=N][:SERVE-FLAG[=VALUE]...]; configurations whose
GPUs do not overlap run at the same time (each server has its own GPUs and its own bench client).
servers=N starts N separate servers on equal shares of the GPUs, swept by one bench over all their
URLs: data-parallel replicas without a shared API process, beside `--dp N` behind one. Every server starts with
`--load-format dummy` (weights made on the GPU) and is stopped with SIGTERM after its sweep.
The JSON holds each configuration's whole `tenk bench` result, a summary (peak output tok/s, TTFT
and TPOT p50 / p99 at c=64 and at the peak level, failures) and the peer's offline figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


@dataclass
class Config:
    name: str
    gpus: str
    serve_args: list[str] = field(default_factory=list)
    concurrency: str | None = None  # None: --concurrency
    # servers=N: N separate `tenk serve` processes, each on its share of the GPUs, and one bench
    # over all their URLs (replicas without a shared API process, to compare with --dp N)
    servers: int = 1

    @classmethod
    def parse(cls, spec: str) -> "Config":
        name, *parts = spec.split(":")
        gpus, args, conc, servers = "", [], None, 1
        for p in parts:
            if p.startswith("gpus="):
                gpus = p[5:]
            elif p.startswith("c="):
                conc = p[2:]
            elif p.startswith("servers="):
                servers = int(p[8:])
            else:
                args.extend(p.split("=", 1))
        ids = gpus.split(",") if gpus else []
        if servers < 1 or (ids and len(ids) % servers):
            raise SystemExit(f"--config {spec!r}: servers={servers} must be >= 1 and divide its {len(ids)} GPUs")
        return cls(name, gpus, args, conc, servers)

    def server_gpus(self) -> list[str]:
        ids = self.gpus.split(",") if self.gpus else []
        share = len(ids) // self.servers if ids else 0
        return [",".join(ids[i * share : (i + 1) * share]) for i in range(self.servers)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"server not ready after {timeout:.0f} s")


def level_summary(level: dict | None) -> dict | None:
    if level is None:
        return None
    pick = lambda k: {q: level[k][q] for q in ("p50", "p99", "mean")} if level.get(k) else None
    return {"concurrency": level["concurrency"], "output_tok_s": level["output_throughput"],
            "steady_output_tok_s": (level.get("steady") or {}).get("output_throughput"),
            "completed": level["completed"], "failed": level["failed"], "ttft_ms": pick("ttft_ms"),
            "tpot_ms": pick("tpot_ms")}


def summarize(bench: dict) -> dict:
    levels = bench.get("levels", [])
    peak = max(levels, key=lambda lv: lv["output_throughput"], default=None)
    at64 = next((lv for lv in levels if lv["concurrency"] == 64), None)
    return {"peak": level_summary(peak), "c64": level_summary(at64),
            "failed_total": sum(lv["failed"] for lv in levels), "levels": len(levels)}


def run_config(cfg: Config, args, log_dir: Path) -> dict:
    procs, logs, urls = [], [], []
    result: dict = {"name": cfg.name, "gpus": cfg.gpus, "servers": cfg.servers}
    t0 = time.time()
    try:
        for i, gpus in enumerate(cfg.server_gpus()):
            port = free_port()
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus
            serve = [sys.executable, "-m", "tenk.cli.main", "serve", args.preset, "--load-format", "dummy",
                     "--port", str(port), "--max-num-seqs", str(args.max_num_seqs),
                     "--max-model-len", str(int((args.input_len + args.output_len) * (1 + args.range_ratio)) + 64),
                     "--no-enable-prefix-caching",
                     *cfg.serve_args]  # fmt: skip
            result.setdefault("serve_command", serve[3:])
            logs.append(log_dir / (f"serve_{cfg.name}.log" if cfg.servers == 1 else f"serve_{cfg.name}_{i}.log"))
            with open(logs[-1], "w") as log:
                procs.append(subprocess.Popen(serve, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs):
            wait_ready(url, proc, args.startup_timeout)
        result["startup_s"] = time.time() - t0
        print(f"[{cfg.name}] ready in {result['startup_s']:.0f} s", flush=True)
        out = log_dir / f"bench_{cfg.name}.json"
        from tenk.models.source import materialize_preset

        tokenizer = str(materialize_preset(args.preset, None))  # the served preset's own tokenizer
        bench = [sys.executable, "-m", "tenk.cli.main", "bench", *[a for u in urls for a in ("--url", u)],
                 "--dataset", "random", "--prompt-format", "ids", "--tokenizer", tokenizer,
                 "--input-len", str(args.input_len), "--output-len", str(args.output_len),
                 "--range-ratio", str(args.range_ratio), "--concurrency", cfg.concurrency or args.concurrency, "--prompts-per-concurrency",
                 str(args.prompts_per_concurrency), "--min-prompts", str(args.min_prompts), "--warmup", str(args.warmup),
                 "--quiet", "--out", str(out), "--level-timeout", str(args.level_timeout)]  # fmt: skip
        if args.bench_workers:
            bench += ["--workers", str(args.bench_workers)]
        b = subprocess.run(bench, env=dict(os.environ), capture_output=True, text=True)
        print(f"[{cfg.name}] bench rc={b.returncode}\n{b.stdout[-3000:]}{b.stderr[-2000:]}", flush=True)
        if out.exists():
            result["bench"] = json.loads(out.read_text())
            result["summary"] = summarize(result["bench"])
        else:
            result["error"] = f"bench wrote no result (rc {b.returncode}): {b.stderr[-500:]}"
    except Exception as exc:  # one configuration failing must not lose the others
        result["error"] = repr(exc)[:500]
        print(f"[{cfg.name}] failed: {exc}", flush=True)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if logs:  # the first server's log stands for all (they run the same command on their own GPUs)
            tail = logs[0].read_text(errors="replace")
            result["server_log_head"] = "\n".join(tail.splitlines()[:40])[:6000]  # weights, KV, graphs
            result["server_log_tail"] = tail[-4000:]
            for key, marker in LOG_LINES.items():
                result[key] = last_line(tail, marker)
    return result


# result key -> the start-up log line it keeps (the report's memory block is read from them)
LOG_LINES = {"weights_log": "model_runner: weights", "kv_cache_log": "KV cache:", "memory_log": "GPU memory after start-up:"}


def last_line(text: str, marker: str) -> str | None:
    found = [ln for ln in text.splitlines() if marker in ln]
    return found[-1] if found else None


def run_peer(args, log_dir: Path) -> dict:
    """transformers' continuous batching, offline, in its own process on --peer-gpu."""
    out = log_dir / "peer.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "offline_throughput.py"), "--preset", args.preset, "--no-tenk",
           "--num-prompts", str(args.peer_num_prompts), "--peer-num-prompts", str(args.peer_num_prompts),
           "--input-len", str(args.input_len), "--output-len", str(args.output_len), "--out", str(out)]
    p = subprocess.run(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": args.peer_gpu}, capture_output=True, text=True)
    print(f"[peer] rc={p.returncode} {p.stdout[-1500:]}{p.stderr[-1500:]}", flush=True)
    if not out.exists():
        return {"engine": "transformers", "error": f"rc {p.returncode}: {p.stderr[-500:]}"}
    runs = json.loads(out.read_text())
    peer = runs["runs"][0] if runs.get("runs") else {"engine": "transformers", "error": "no run"}
    peer["device"] = runs.get("device")
    return peer


_GIB = 1 << 30


def _layout(cfg_result: dict, preset: str, gpu_name: str) -> dict | None:
    """The report's memory block for one configuration (per GPU), from its start-up log lines
    ("weights (...): bfloat16 2.87 GiB, nvfp4 15.19 GiB", "KV cache: N tokens in DTYPE" and, for
    reserve and free, "GPU memory after start-up: U GiB in use of T GiB")."""
    log = (cfg_result.get("server_log_head") or "") + "\n" + (cfg_result.get("server_log_tail") or "")
    # results written before a key existed keep the line only in the saved log head / tail
    wl, kl, ml = (cfg_result.get(key) or last_line(log, marker) for key, marker in LOG_LINES.items())
    m = re.search(r"KV cache: (\d+) tokens(?: in (\S+))?", kl or "")
    if not wl or not m:
        return None
    weights = sum(float(x) for x in re.findall(r"([\d.]+) GiB", wl.split(":", 3)[-1])) * _GIB
    import torch

    from tenk.engine.kv_cache import kv_block_bytes
    from tenk.models.config import ModelConfig
    from tenk.models.source import materialize_preset

    tokens = int(m.group(1))
    dtype = getattr(torch, m.group(2) or "bfloat16", torch.bfloat16)
    mc = ModelConfig.from_dir(materialize_preset(preset, None))
    kv_bytes = tokens * kv_block_bytes(mc, 16, dtype) // 16
    tp, dp = _parallel(cfg_result.get("serve_command") or [])
    dp *= cfg_result.get("servers", 1)
    kv_bytes //= tp  # the log gives one replica's tokens; each of its TP ranks holds 1/tp of every token
    layout = {"weights_bytes_per_gpu": int(weights), "kv_bytes_per_gpu": int(kv_bytes), "kv_tokens": tokens,
              "gpus": tp * dp, "tp": tp, "dp": dp, "gpu_name": gpu_name, "device": "cuda"}
    mem = re.search(r"GPU memory after start-up: ([\d.]+) GiB in use of ([\d.]+) GiB", ml or "")
    if mem:  # rank 0's GPU once serving can start: the rest beyond weights and KV cache is the reserve
        used, total = (float(x) * _GIB for x in mem.groups())
        layout.update(gpu_memory_bytes=int(total), reserve_bytes_per_gpu=max(0, int(used - weights - kv_bytes)))
    return layout


def _parallel(serve_command: list[str]) -> tuple[int, int]:
    """(TP, DP) from a `tenk serve` command line."""
    tp = dp = 1
    for flag, value in zip(serve_command, serve_command[1:]):
        if flag in ("--tp", "--tensor-parallel-size"):
            tp = int(value)
        elif flag in ("--dp", "--data-parallel-size"):
            dp = int(value)
    return tp, dp


def export_bench_files(report: dict, out: Path, labels: dict[str, dict]) -> list[Path]:
    """One `tenk.bench/1` file per configuration, named and laid out for `tenk report`."""
    paths = []
    for r in report["configs"]:
        if "bench" not in r:
            continue
        doc = json.loads(json.dumps(r["bench"]))
        tp, dp = _parallel(r.get("serve_command") or [])
        servers = r.get("servers", 1)
        layout = f"TP={tp} DP={dp * servers}" + (f" ({servers} servers)" if servers > 1 else "")
        doc["config"]["labels"] = {"name": r["name"], "gpu": report.get("device"), "gpus": tp * dp * servers,
                                   "layout": layout, **labels.get(r["name"], {})}
        layout = _layout(r, report["preset"], report.get("device") or "")
        if layout:
            doc["config"]["layout"] = layout
        path = out.parent / f"{out.stem}_{r['name']}.json"
        path.write_text(json.dumps(doc, indent=1))
        paths.append(path)
    return paths


def _device_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip().splitlines()
        return out[0] if out else platform.processor() or "cpu"
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "cpu"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--config", action="append", default=[], help="NAME:gpus=0[:--flag=value...]")
    ap.add_argument("--concurrency", default="seed")
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--range-ratio", type=float, default=0.0,
                    help="input and output lengths drawn from N*(1-r)..N*(1+r) (tenk bench --range-ratio)")
    ap.add_argument("--prompts-per-concurrency", type=float, default=2.0)
    ap.add_argument("--min-prompts", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--max-num-seqs", type=int, default=1024)
    ap.add_argument("--level-timeout", type=float, default=300.0)
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--bench-workers", type=int, default=0)
    ap.add_argument("--peer-gpu", default=None, help="GPU for transformers' continuous batching (after the sweeps)")
    ap.add_argument("--peer-num-prompts", type=int, default=256)
    ap.add_argument("--label", action="append", default=[],
                    help="NAME:KEY=VALUE label for the exported bench file of configuration NAME (tenk report)")
    ap.add_argument("--export-only", action="store_true",
                    help="no runs: re-export the per-configuration bench files from an existing --out JSON")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    labels: dict[str, dict] = {}
    for item in args.label:
        name, kv = item.split(":", 1)
        k, v = kv.split("=", 1)
        labels.setdefault(name, {})[k] = v
    if args.export_only:
        out = Path(args.out)
        for p in export_bench_files(json.loads(out.read_text()), out, labels):
            print(f"wrote {p}")
        return 0

    out = Path(args.out)
    log_dir = out.parent / (out.stem + "_logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    configs = [Config.parse(c) for c in args.config]
    results: dict[str, dict] = {}
    peer: dict = {}
    lock = threading.Lock()

    def write_report() -> dict:
        """The JSON and the exported bench files of every configuration finished so far: a run
        cut off by a time limit keeps what it measured (the server logs' KV lines included)."""
        import torch

        with lock:
            done = [results[c.name] for c in configs if c.name in results]
            report = {
                "benchmark": "headline", "preset": args.preset, "input_len": args.input_len,
                "output_len": args.output_len, "range_ratio": args.range_ratio, "concurrency": args.concurrency,
                "prompts_per_concurrency": args.prompts_per_concurrency, "min_prompts": args.min_prompts,
                "device": _device_name(), "torch": torch.__version__, "configs": done,
                "unfinished": [c.name for c in configs if c.name not in results],
            }  # fmt: skip
            if peer:
                report["peer"] = dict(peer)
            peaks = {r["name"]: (r.get("summary") or {}).get("peak") for r in done}
            report["peaks_output_tok_s"] = {k: v["output_tok_s"] if v else None for k, v in peaks.items()}
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(report, indent=1))
            tmp.replace(out)  # a reader never sees half a file
            for p in export_bench_files(report, out, labels):
                print(f"wrote {p}", flush=True)
            return report

    def run_and_record(cfg: Config) -> None:
        result = run_config(cfg, args, log_dir)
        with lock:
            results[cfg.name] = result
        write_report()

    # configurations on disjoint GPUs run together; a configuration waits for any that shares a GPU
    busy: dict[str, threading.Thread] = {}
    threads = []
    for cfg in configs:
        for g in cfg.gpus.split(","):
            if g in busy:
                busy[g].join()
        t = threading.Thread(target=run_and_record, args=(cfg,))
        t.start()
        threads.append(t)
        for g in cfg.gpus.split(","):
            busy[g] = t
    if args.peer_gpu is not None:  # starts as soon as the configurations on its GPU are done
        if args.peer_gpu in busy:
            busy[args.peer_gpu].join()
        t = threading.Thread(target=lambda: peer.update(run_peer(args, log_dir)))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    report = write_report()
    for name, v in report["peaks_output_tok_s"].items():
        print(f"{name}: peak {v if v is None else f'{v:,.0f}'} output tok/s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
