"""Which GPUs each data-parallel replica gets on this machine (the multiprocessing executor;
with Ray, Ray grants them).

Replica i of a `--tp N --dp M` server sees GPUs [i*N, (i+1)*N) of those visible to the server,
through CUDA_VISIBLE_DEVICES in its environment, so inside every replica its tensor-parallel
ranks are cuda:0..N-1. No torch here: the API process never loads it.
"""

from __future__ import annotations

import os

from tenk.errors import ConfigError

_NVIDIA_GPUS = "/proc/driver/nvidia/gpus"  # one folder per GPU the driver knows


def visible_gpus(env: dict[str, str]) -> list[str]:
    """GPU ids the replicas may use: CUDA_VISIBLE_DEVICES (the server's engine_env first,
    then this process's environment), else every GPU the NVIDIA driver lists."""
    cvd = env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    if cvd is not None:
        ids = [x.strip() for x in cvd.split(",") if x.strip()]
        return [] if ids[:1] == ["-1"] else ids
    try:
        return [str(i) for i in range(len(os.listdir(_NVIDIA_GPUS)))]
    except OSError:
        return []


def replica_envs(dp: int, tp: int, device: str, env: dict[str, str]) -> list[dict[str, str]]:
    """The engine environment of each of `dp` replicas."""
    base = {k: str(v) for k, v in env.items()}
    if dp == 1 or device == "cpu":
        return [dict(base) for _ in range(dp)]  # one replica sees what the server sees
    gpus = visible_gpus(base)
    if not gpus:
        if device == "cuda":
            raise ConfigError("--device cuda was asked for but no GPU is visible to the server")
        return [dict(base) for _ in range(dp)]  # auto on a machine without GPUs: CPU replicas
    need = dp * tp
    if len(gpus) < need:
        raise ConfigError(
            f"--dp {dp} x --tp {tp} needs {need} GPUs, but {len(gpus)} are visible ({','.join(gpus)}). "
            "Lower --dp or --tp, or make more GPUs visible (CUDA_VISIBLE_DEVICES)."
        )
    return [{**base, "CUDA_VISIBLE_DEVICES": ",".join(gpus[i * tp : (i + 1) * tp])} for i in range(dp)]
