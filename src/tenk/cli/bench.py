"""`tenk bench`: a concurrency sweep (or a Poisson request-rate run) against any
OpenAI-compatible server, with a live table, the seed-style summary, JSON and CSV."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import List, Optional

import typer

from tenk.cli.common import console, user_errors


def register(app: typer.Typer) -> None:
    @app.command("bench")
    @user_errors
    def bench(
        url: List[str] = typer.Option([], "--url", help="Server root, e.g. http://127.0.0.1:8000; repeat to spread requests over several."),
        model: Optional[str] = typer.Option(None, "--model", help="Model name to send (default: the first of the server's /v1/models)."),
        endpoint: str = typer.Option("completions", "--endpoint", help="completions (/v1/completions) or chat (/v1/chat/completions)."),
        stream: bool = typer.Option(True, "--stream/--no-stream", help="Stream tokens (needed for TTFT, TPOT, ITL)."),
        dataset: str = typer.Option("random", "--dataset", help="random, jsonl, or a .jsonl file path."),
        dataset_path: Optional[str] = typer.Option(None, "--dataset-path", help="The JSONL file: one {\"prompt\": ...} or {\"messages\": [...]} per line, optional \"max_tokens\"."),
        input_len: str = typer.Option("256", "--input-len", help="Prompt tokens: N or LOW:HIGH."),
        output_len: str = typer.Option("256", "--output-len", help="Generated tokens: N or LOW:HIGH (sent as max_tokens with ignore_eos)."),
        range_ratio: float = typer.Option(0.0, "--range-ratio", help="Lengths drawn from N*(1-r)..N*(1+r)."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Local Hugging Face tokenizer dir for exact prompt lengths (default: the server's /tokenize)."),
        prompt_format: str = typer.Option("text", "--prompt-format", help="text, or ids (token ids as the prompt; completions only; exact without a tokenizer)."),
        ignore_eos: bool = typer.Option(True, "--ignore-eos/--no-ignore-eos", help="Ask the server to generate exactly max_tokens."),
        concurrency: str = typer.Option("seed", "--concurrency", "-c", help="Comma-separated levels; 'seed' = 1,4,8,16,32,64,128,256,384,512,640,896."),
        request_rate: Optional[float] = typer.Option(None, "--request-rate", help="Poisson arrivals at R requests/s instead of the concurrency sweep."),
        max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", help="Cap on in-flight requests with --request-rate."),
        num_prompts: Optional[int] = typer.Option(None, "--num-prompts", "-n", help="Requests per level (default max(K x c, MIN), K and MIN below; 64 with --request-rate)."),
        prompts_per_concurrency: float = typer.Option(4.0, "--prompts-per-concurrency", help="K: requests per level = K x concurrency (unless --num-prompts)."),
        min_prompts: int = typer.Option(64, "--min-prompts", help="MIN: fewest requests per level (unless --num-prompts)."),
        warmup: int = typer.Option(4, "--warmup", help="Unmeasured requests before the sweep."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Client processes (default: one per two cores, at most 8)."),
        balance: str = typer.Option("least", "--balance", help="Across several --url: least (outstanding requests) or rr (round-robin)."),
        level_timeout: float = typer.Option(1800.0, "--level-timeout", help="Seconds per level; unfinished requests are cut off and counted."),
        request_timeout: float = typer.Option(600.0, "--request-timeout", help="Seconds per request before it counts as failed."),
        slo: Optional[str] = typer.Option(None, "--slo", help="Goodput SLO in seconds, e.g. ttft=0.5,tpot=0.05 (e2e= too)."),
        seed: int = typer.Option(0, "--seed", help="Seed of prompts and arrivals."),
        temperature: float = typer.Option(0.0, "--temperature"),
        metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="Scrape the server's /metrics (KV usage, running, waiting) during each level."),
        save_requests: bool = typer.Option(False, "--save-requests", help="Also write one record per request into the JSON."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="JSON result path (CSV beside it). Default bench-results/bench-<time>.json."),
        api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TENK_API_KEY", help="Bearer token, if the server wants one."),
        self_test: bool = typer.Option(False, "--self-test", help="Benchmark a built-in fake server that answers instantly: the client's own ceiling."),
        server_procs: int = typer.Option(1, "--server-procs", help="Self-test: fake server processes."),
        tokens_per_chunk: int = typer.Option(1, "--tokens-per-chunk", help="Self-test: tokens per streamed event."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No live table."),
    ) -> None:
        """Benchmark an OpenAI-compatible server (tenk, vLLM, SGLang): concurrency sweep, JSON + CSV."""
        from tenk.bench.config import BenchConfig, LengthRange, default_workers, parse_concurrency
        from tenk.bench.live import LiveTable
        from tenk.bench.sweep import default_out_path, run_sweep
        from tenk.errors import ConfigError

        n_workers = workers or default_workers()
        if self_test:
            from tenk.bench.fake_server import FakeServer, FakeServerConfig
            from tenk.bench.selftest import SelfTestConfig, self_test_config

            levels = (16, 64, 256) if concurrency == "seed" else parse_concurrency(concurrency)
            st = SelfTestConfig(
                workers=n_workers, server_procs=server_procs, tokens_per_chunk=tokens_per_chunk,
                concurrency=levels, input_len=32 if input_len == "256" else int(input_len),
                output_len=int(output_len), num_prompts=num_prompts, endpoint=endpoint,
                out=str(out or default_out_path()),
            )
            server = FakeServer(FakeServerConfig(tokens_per_chunk=tokens_per_chunk, procs=server_procs))
            url = [server.start()]
            try:
                config = self_test_config(st, url[0])
                result = _run(config, run_sweep, LiveTable, quiet, "tenk bench --self-test (fake server)")
            finally:
                server.stop()
            peak = result.peak()
            typer.echo(result.summary())
            if peak is not None:
                typer.echo(
                    f"client ceiling: {peak.output_throughput:,.0f} output tok/s streamed "
                    f"({n_workers} worker process{'es' if n_workers > 1 else ''}, {server_procs} fake server process"
                    f"{'es' if server_procs > 1 else ''}, {tokens_per_chunk} token/chunk)"
                )
            _finish(result)
            return

        if not url:
            raise ConfigError("give --url of an OpenAI-compatible server (or --self-test)")
        if dataset.endswith(".jsonl") or Path(dataset).is_file():
            dataset, dataset_path = "jsonl", dataset
        config = BenchConfig(
            urls=list(url), model=model, endpoint=endpoint, stream=stream, dataset=dataset,
            dataset_path=dataset_path, input_len=LengthRange.parse(input_len, range_ratio),
            output_len=LengthRange.parse(output_len, range_ratio), tokenizer=tokenizer,
            prompt_format=prompt_format, ignore_eos=ignore_eos, concurrency=parse_concurrency(concurrency),
            request_rate=request_rate, max_concurrency=max_concurrency, num_prompts=num_prompts,
            prompts_per_concurrency=prompts_per_concurrency, min_prompts=min_prompts, warmup=warmup, workers=n_workers, balance=balance, level_timeout=level_timeout,
            request_timeout=request_timeout, slo=slo, seed=seed, temperature=temperature,
            scrape_metrics=metrics, save_requests=save_requests,
            out=str(out or default_out_path()), api_key=api_key,
        )
        result = _run(config, run_sweep, LiveTable, quiet, f"tenk bench {', '.join(config.urls)}")
        typer.echo(result.summary())
        _finish(result)


def _run(config, run_sweep, LiveTable, quiet: bool, title: str):
    """Runs the sweep with a live table; the first Ctrl-C stops it gracefully (partial results
    are written), a second one aborts."""
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print("[yellow]stopping: finishing this level's bookkeeping and writing results (Ctrl-C again to abort)[/yellow]")

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        if quiet:
            return run_sweep(config, stop=stop)
        with LiveTable(console, title=title) as live:
            return run_sweep(config, stop=stop, on_progress=live.progress, on_level=live.level_done)
    finally:
        signal.signal(signal.SIGINT, old)


def _finish(result) -> None:
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if result.json_path:
        console.print(f"wrote {result.json_path} and {result.csv_path}", highlight=False)
    if result.interrupted:
        console.print("[yellow]interrupted: the results hold the levels measured so far[/yellow]")
        raise typer.Exit(130)
