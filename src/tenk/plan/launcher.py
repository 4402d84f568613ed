"""Start a planned layout as real servers for `tenk plan --autotune`, and stop them again.

A launcher is any callable `(layout, gpu_ids, port) -> ServerHandle`; autotune only needs the
handle's URLs and `stop()`. `TenkServeLauncher` runs `tenk serve` subprocesses:

- dp_mode "replicas" (default): one `tenk serve --tp N` per replica on its own GPUs and port;
  the bench client spreads requests over them by least outstanding requests, which is what
  tenk's DP load balancer does behind one endpoint. It works before and after the server
  grows `--dp`.
- dp_mode "server": one `tenk serve --tp N --dp M` (the command autotune recommends).

Each server gets its own process group (start_new_session), so stopping it ends exactly the
processes this launcher started: SIGTERM (graceful drain), then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from tenk.errors import TenkError
from tenk.plan.planner import LayoutPlan
from tenk.server.args import api_servers_for


class ServerHandle(Protocol):
    urls: list[str]

    def stop(self) -> None: ...


Launcher = Callable[[LayoutPlan, list[int], int], ServerHandle]


class LaunchError(TenkError):
    """A planned layout's server did not come up."""


def wait_healthy(url: str, timeout: float, alive: Callable[[], bool] = lambda: True, what: str = "server") -> None:
    """Poll GET url/health until it answers 200, the process dies, or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise LaunchError(f"{what} exited before it became healthy")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    raise LaunchError(f"{what} did not answer {url}/health within {timeout:.0f} s")


@dataclass(slots=True)
class ProcessServer:
    """`tenk serve` subprocesses of one layout."""

    urls: list[str]
    procs: list[subprocess.Popen]
    commands: list[list[str]]
    logs: list[Path] = field(default_factory=list)
    grace_s: float = 20.0

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)  # its own group: only what we started
        deadline = time.monotonic() + self.grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)

    def log_tail(self, n: int = 20) -> str:
        out = []
        for path in self.logs:
            if path.is_file():
                out += path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(out)


def serve_quantization(plan_name: str) -> str:
    """A planned quantization as `tenk serve --quantization` spells it for random weights."""
    names = {"bf16": "none", "nvfp4": "nvfp4", "nvfp4-all": "nvfp4-all", "fp8": "fp8"}
    if plan_name not in names:
        from tenk.errors import ConfigError

        raise ConfigError(f"tenk serve makes no random weights in {plan_name!r} (choose from {', '.join(names)})")
    return names[plan_name]


def uses_dummy_weights(args: tuple[str, ...] | list[str]) -> bool:
    """True when the serve arguments ask for random weights (--load-format dummy)."""
    args = list(args)
    return "--load-format=dummy" in args or any(a == "--load-format" and b == "dummy" for a, b in zip(args, args[1:]))


@dataclass(slots=True)
class TenkServeLauncher:
    model: str
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    device: str = "auto"  # "cpu": every "GPU" is a CPU process (tests, laptops)
    dp_mode: str = "replicas"  # "replicas" | "server"
    extra_args: tuple[str, ...] = ()  # e.g. ("--load-format", "dummy")
    # With random weights (--load-format dummy) each server is told its layout's quantization;
    # a real checkpoint serves its own.
    pass_quantization: bool = False
    host: str = "127.0.0.1"
    startup_timeout: float = 1800.0
    log_dir: Path | None = None
    executable: tuple[str, ...] = (sys.executable, "-m", "tenk.cli.main", "serve")

    def command(self, lp: LayoutPlan, port: int, dp: int) -> list[str]:
        cmd = [*self.executable, self.model, "--tp", str(lp.tp), "--dp", str(dp), "--port", str(port),
               "--host", self.host, "--gpu-memory-utilization", str(self.gpu_memory_utilization),
               "--max-num-seqs", str(self.max_num_seqs)]
        if lp.max_model_len:
            cmd += ["--max-model-len", str(lp.max_model_len)]
        if dp > 1:
            cmd += ["--api-server-count", str(api_servers_for(dp))]
        if self.device != "auto":
            cmd += ["--device", self.device]
        return cmd + list(self.quantization_args(lp)) + list(self.extra_args)

    def quantization_args(self, lp: LayoutPlan) -> tuple[str, ...]:
        """`--quantization NAME` for random weights in the layout's format; nothing for a checkpoint's own."""
        if not self.pass_quantization or lp.quantization.startswith("auto"):
            return ()
        return ("--quantization", serve_quantization(lp.quantization))

    def __call__(self, lp: LayoutPlan, gpu_ids: list[int], port: int) -> ProcessServer:
        if self.dp_mode == "server":
            groups = [(gpu_ids[: lp.gpus], lp.dp)]
        else:
            groups = [(gpu_ids[i * lp.tp : (i + 1) * lp.tp], 1) for i in range(lp.dp)]
        server = ProcessServer(urls=[], procs=[], commands=[])
        try:
            for i, (gpus, dp) in enumerate(groups):
                env = dict(os.environ)
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus)) if self.device != "cpu" else ""
                cmd = self.command(lp, port + i, dp)
                if self.log_dir is None:
                    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
                else:
                    self.log_dir.mkdir(parents=True, exist_ok=True)
                    log = self.log_dir / f"{lp.quantization.split(' ')[0]}-{lp.name}-{i}.log"
                    with open(log, "w") as out:
                        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                    server.logs.append(log)
                server.procs.append(proc)
                server.commands.append(cmd)
                server.urls.append(f"http://{self.host}:{port + i}")
            for url, proc in zip(server.urls, server.procs):
                wait_healthy(url, self.startup_timeout, lambda p=proc: p.poll() is None, f"tenk serve for {lp.name}")
        except BaseException as exc:
            tail = server.log_tail()
            server.stop()
            if isinstance(exc, LaunchError) and tail:
                raise LaunchError(f"{exc}; its log ends:\n{tail}") from None
            raise
        return server
