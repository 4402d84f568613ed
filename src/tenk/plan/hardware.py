"""The hardware a plan is made for: one GPU's memory, bandwidth and peak, and the links
between GPUs.

Interconnect constants feed the roofline's all-reduce term (roofline.py). A ring all-reduce of
`n` bytes over `t` GPUs takes 2(t-1) steps, each moving n/t bytes over one link and paying one
hop latency:

    time = 2 (t - 1) * hop_latency + 2 (t - 1) / t * n / link_bandwidth

- nvlink: NVLink 4 (H100/H200 SXM). NCCL reaches ~360 GB/s bus bandwidth on large all-reduces;
  small ones (a decode step's B x hidden bf16) are latency-bound, ~2.5 us per ring step
  (measured all-reduces of a few KB on 2-8 H100s run 5-20 us).
- pcie: GPUs without NVLink, run as the seed ran them (NCCL_P2P_DISABLE=1, no custom
  all-reduce): traffic goes through host memory, ~20 GB/s and ~8 us per ring step (PCIe 5 x16;
  a 2-GPU all-reduce of a few KB costs ~15-20 us, a 4-GPU one ~50 us).
"""

from __future__ import annotations

from dataclasses import dataclass

from tenk.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Interconnect:
    name: str
    link_bandwidth: float  # bytes/s one GPU sends per ring step (NCCL bus bandwidth)
    hop_latency: float  # seconds per ring step

    def all_reduce_seconds(self, nbytes: float, tp: int) -> float:
        if tp <= 1:
            return 0.0
        steps = 2 * (tp - 1)
        return steps * self.hop_latency + steps / tp * nbytes / self.link_bandwidth

    def all_gather_seconds(self, nbytes_total: float, tp: int) -> float:
        """All-gather of a tensor whose gathered size is nbytes_total (t-1 ring steps)."""
        if tp <= 1:
            return 0.0
        steps = tp - 1
        return steps * self.hop_latency + steps / tp * nbytes_total / self.link_bandwidth


INTERCONNECTS = {
    "nvlink": Interconnect("nvlink", link_bandwidth=360e9, hop_latency=2.5e-6),
    "pcie": Interconnect("pcie", link_bandwidth=20e9, hop_latency=8e-6),
}


@dataclass(frozen=True, slots=True)
class GpuSpec:
    memory_bytes: int  # what the driver reports as total (torch.cuda.mem_get_info()[1])
    hbm_bandwidth: float = 3.35e12  # bytes/s
    peak_flops: float = 790e12  # dense bf16 FLOP/s reached by real GEMMs (H100: ~790 measured)
    interconnect: str = "nvlink"
    name: str = "gpu"

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0:
            raise ConfigError("--gpu-memory must be positive")
        if self.interconnect not in INTERCONNECTS:
            raise ConfigError(f"--interconnect must be one of {', '.join(INTERCONNECTS)}, got {self.interconnect!r}")

    @property
    def link(self) -> Interconnect:
        return INTERCONNECTS[self.interconnect]


# name -> (total memory as the driver reports it, HBM bandwidth, dense bf16 FLOP/s, interconnect).
# Peaks are what GEMMs reach, not the data-sheet number where a measurement exists.
GPU_PRESETS: dict[str, tuple[int, float, float, str]] = {
    "h100": (81_559 << 20, 3.35e12, 790e12, "nvlink"),  # H100 SXM 80 GB; 790 TFLOP/s measured here
    "h200": (143_771 << 20, 4.8e12, 790e12, "nvlink"),  # same chip as H100, 141 GB HBM3e
    "a100": (81_920 << 20, 2.04e12, 280e12, "nvlink"),  # A100 SXM 80 GB
    "rtx-pro-6000": (97_887 << 20, 1.79e12, 440e12, "pcie"),  # the seed's RTX PRO 6000 Blackwell, 96 GB
}


def gpu_from_preset(name: str) -> GpuSpec:
    key = name.lower()
    if key not in GPU_PRESETS:
        raise ConfigError(f"unknown --gpu {name!r} (known: {', '.join(GPU_PRESETS)})")
    mem, bw, flops, link = GPU_PRESETS[key]
    return GpuSpec(memory_bytes=mem, hbm_bandwidth=bw, peak_flops=flops, interconnect=link, name=key)
