"""ServerArgs: everything `tenk serve` (or an in-process caller) decides about one server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tenk.engine.graph_modes import check_cudagraph_mode
from tenk.engine.kv_cache_dtype import check_kv_cache_dtype
from tenk.errors import ConfigError

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
EXECUTORS = ("mp", "ray")


def api_servers_for(data_parallel_size: int) -> int:
    """`tenk serve`'s default --api-server-count (plan and autotune write it out too): two per
    replica once there are several (DP=2 on two H200s reached 1.91x DP=1 so, 1.74x with one API
    process, which caps near 28K tok/s). In-process `launch()` keeps ServerArgs' 1."""
    return 2 * data_parallel_size if data_parallel_size > 1 else 1


@dataclass(slots=True)
class ServerArgs:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000  # 0: pick a free port (the handle tells which)
    served_model_name: list[str] | None = None  # None: the model path as given
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    data_parallel_size: int = 1  # engine replicas behind this endpoint, each with its own GPUs
    # API processes sharing the listening socket, each talking to every replica: one process
    # streams some 30K tokens/s, so several replicas need several (vLLM's --api-server-count).
    api_server_count: int = 1
    # "mp": replicas are local processes; "ray": Ray actors, placed on any node of a Ray cluster.
    distributed_executor: str = "mp"
    ray_address: str | None = None  # None: RAY_ADDRESS, a cluster running here, else a new local one
    restart_replicas: bool = True  # a replica that dies is restarted (with backoff)
    # EngineConfig fields (model is filled in); checked by the engine process at start.
    engine: dict[str, Any] = field(default_factory=dict)
    # Environment of the engine process, set before it imports torch: CUDA_VISIBLE_DEVICES for
    # the GPUs of a replica, OMP_NUM_THREADS for its CPU threads.
    engine_env: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    graceful_shutdown_s: float = 30.0  # SIGTERM: in-flight requests get this long to finish
    startup_timeout_s: float | None = None  # None: wait as long as loading takes
    log_level: str = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.data_parallel_size, int) or self.data_parallel_size < 1:
            raise ConfigError(f"--data-parallel-size must be a positive integer, got {self.data_parallel_size!r}")
        if not isinstance(self.api_server_count, int) or self.api_server_count < 1:
            raise ConfigError(f"--api-server-count must be a positive integer, got {self.api_server_count!r}")
        if self.distributed_executor not in EXECUTORS:
            raise ConfigError(f"--distributed-executor must be one of {', '.join(EXECUTORS)}, "
                              f"got {self.distributed_executor!r}")  # fmt: skip
        if self.ray_address and self.distributed_executor != "ray":
            raise ConfigError("--ray-address needs --distributed-executor ray")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.served_model_name is not None:
            names = [n for n in self.served_model_name if n]
            if not names:
                raise ConfigError("--served-model-name needs at least one non-empty name")
            self.served_model_name = names
        if self.api_key is not None and not self.api_key:
            self.api_key = None
        # Checked here too, so a typo fails at once rather than after the engine processes start.
        if "kv_cache_dtype" in self.engine:
            check_kv_cache_dtype(self.engine["kv_cache_dtype"], "--kv-cache-dtype")
        if "cudagraph_mode" in self.engine:
            check_cudagraph_mode(self.engine["cudagraph_mode"], "--cudagraph-mode")

    @property
    def model_names(self) -> list[str]:
        return list(self.served_model_name or [self.model])

    @property
    def engine_kwargs(self) -> dict[str, Any]:
        return {**self.engine, "model": self.model}
