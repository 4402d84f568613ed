"""`tenk serve MODEL`: the OpenAI-compatible server (flags named as vLLM's)."""

from __future__ import annotations

from typing import Optional

import typer

from tenk.cli.common import setup_logging, user_errors

BACKENDS = ("tenk",)


def register(app: typer.Typer) -> None:
    app.command(help="Serve MODEL over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
                "/metrics...). Stops gracefully on SIGTERM or Ctrl-C.")(serve)  # fmt: skip


@user_errors
def serve(
    model: str = typer.Argument(..., help="Hugging Face model directory."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port to listen on (0: any free port)."),
    served_model_name: Optional[list[str]] = typer.Option(
        None, "--served-model-name", help="Name(s) clients use in 'model'; repeat for several. Default: MODEL."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="TENK_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/*."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", help="Most sequences decoded together."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="Context length (default: the model's)."),
    max_num_batched_tokens: Optional[int] = typer.Option(None, "--max-num-batched-tokens", help="Tokens per step."),
    gpu_memory_utilization: float = typer.Option(
        0.9, "--gpu-memory-utilization", help="Fraction of GPU memory to use."),
    quantization: str = typer.Option("auto", help="auto (what the checkpoint declares), or a format name."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    dtype: str = typer.Option("auto", help="auto, bfloat16, float16 or float32."),
    load_format: str = typer.Option("auto", "--load-format", help="auto/safetensors, or dummy for random weights."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer directory (default: MODEL)."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", "--tp", help="GPUs per replica."),
    enable_expert_parallel: bool = typer.Option(
        False, "--enable-expert-parallel", help="Split whole experts over the TP ranks instead of each expert's FFN."),
    disable_custom_all_reduce: bool = typer.Option(
        False, "--disable-custom-all-reduce", help="Accepted for vLLM compatibility: tenk all-reduces through NCCL."),
    data_parallel_size: int = typer.Option(
        1, "--data-parallel-size", "--dp", help="Engine replicas behind this endpoint, each on its own --tp GPUs."),
    api_server_count: Optional[int] = typer.Option(
        None, "--api-server-count", help="API processes sharing the port (one streams about 28K tok/s). Default: "
        "1, or two per replica with --dp > 1."),
    distributed_executor: str = typer.Option(
        "mp", "--distributed-executor", help="mp: replicas are local processes; ray: Ray actors on a Ray cluster."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Ray cluster to join (HOST:PORT, ray://...; default: RAY_ADDRESS or local)."),
    enforce_eager: bool = typer.Option(False, "--enforce-eager", help="No CUDA graphs."),
    max_cudagraph_capture_size: int = typer.Option(
        512, "--max-cudagraph-capture-size", help="Largest decode batch run as a decode CUDA graph."),
    cudagraph_mode: str = typer.Option(
        "full", "--cudagraph-mode", help="full: prefill, mixed and larger decode steps replay graphs per token "
        "bucket too; full_decode_only: those run eagerly."),
    enable_prefix_caching: bool = typer.Option(
        True, "--enable-prefix-caching/--no-enable-prefix-caching", help="Reuse KV blocks of shared prompt prefixes."),
    block_size: int = typer.Option(16, "--block-size", help="Tokens per KV block."),
    kv_cache_dtype: str = typer.Option(
        "auto", "--kv-cache-dtype", help="auto (the model's dtype), or fp8 / fp8_e4m3: 1 byte per element, twice bf16's tokens."),
    num_kv_blocks: Optional[int] = typer.Option(
        None, "--num-kv-blocks", help="Fix the KV pool size (default: sized from memory)."),
    seed: int = typer.Option(0, help="Engine seed."),
    backend: str = typer.Option("tenk", help="Serving engine: tenk."),
    graceful_shutdown_timeout: float = typer.Option(
        30.0, "--graceful-shutdown-timeout", help="Seconds in-flight requests get to finish after SIGTERM."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every HTTP request."),
) -> None:  # fmt: skip
    import signal

    from tenk.errors import ConfigError

    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not available; choose one of: {', '.join(BACKENDS)}")
    setup_logging(verbose)
    from tenk.server import ServerArgs, serve_forever
    from tenk.server.args import api_servers_for

    engine = dict(
        tokenizer=tokenizer, dtype=dtype, device=device, load_format=load_format, quantization=quantization,
        max_num_seqs=max_num_seqs, max_model_len=max_model_len, max_num_batched_tokens=max_num_batched_tokens,
        block_size=block_size, kv_cache_dtype=kv_cache_dtype, gpu_memory_utilization=gpu_memory_utilization,
        num_kv_blocks=num_kv_blocks,
        enable_prefix_caching=enable_prefix_caching, enforce_eager=enforce_eager,
        max_cudagraph_capture_size=max_cudagraph_capture_size, cudagraph_mode=cudagraph_mode,
        tensor_parallel_size=tensor_parallel_size, enable_expert_parallel=enable_expert_parallel, seed=seed,
    )  # fmt: skip
    args = ServerArgs(
        model=model, host=host, port=port, served_model_name=served_model_name or None, api_key=api_key,
        data_parallel_size=data_parallel_size,
        api_server_count=api_server_count if api_server_count is not None else api_servers_for(data_parallel_size),
        distributed_executor=distributed_executor, ray_address=ray_address,
        engine=engine, graceful_shutdown_s=graceful_shutdown_timeout,
        log_level="debug" if verbose else "info", access_log=access_log,
    )  # fmt: skip

    # SIGTERM is a normal way to stop a server: uvicorn drains in-flight requests, then hands
    # the signal back to this handler, which exits 0 (also if it comes while the model loads).
    def _terminated(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminated)
    serve_forever(args)
