"""Where a run trains: the device it asks for, as this machine has it, and the process's memory tuning."""

import ctypes
import os

import torch
from omegaconf import DictConfig, OmegaConf


# Here, not in the trainer: `python -m bnlab.train` runs the trainer as __main__, whose functions the sweep
# launcher pickles by value, and torch.backends cannot be pickled.
def resolve_device(name: str) -> str:
    """auto: CUDA if present, else Apple's MPS, else the CPU; a named device only if it is present."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    return name if available.get(name) else "cpu"


def with_resolved_device(cfg: DictConfig) -> DictConfig:
    """The config with device=auto replaced by the device it picks on this machine, so that the run's identity,
    its config.yaml and the stacking rule all see the device that trains (a GPU run and a CPU run never share an
    identity, so a CPU rerun cannot skip a run finished on a GPU)."""
    if cfg.device != "auto":
        return cfg
    return OmegaConf.merge(cfg, {"device": resolve_device("auto")})  # type: ignore[return-value]


def use_device(name: str) -> torch.device:
    device = torch.device(resolve_device(name))
    if device.type == "cuda":
        # full float32 matmuls, as on the CPU: TF32 would change the numbers' precision
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        # a repeat or a resume must log the same bits: cuBLAS's split reductions and cuDNN's autotuned kernels
        # (max-pool's backward among them) are otherwise free to change the order of a sum between calls
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS first starts
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        # warn_only: the probes' histograms (histc) have no deterministic CUDA kernel; they count, and never train
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def keep_freed_memory() -> None:
    """Have glibc keep the memory of freed tensors mapped, so that the next step reuses it without page faults.

    With its defaults glibc maps a tensor of a few megabytes afresh (or trims the heap when freeing leaves enough at
    its top), so a step's activations can fault all their pages in again every step; whether they do depends on what
    the process allocated before, as glibc's threshold adapts (docs/speed.md). Numbers are unchanged: the same
    kernels on the same 64-byte-aligned buffers."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): its allocator is left as it is
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest; bigger tensors (the datasets) are still mmapped
    libc.mallopt(m_trim_threshold, 1 << 30)  # a freed heap top is returned only past 1 GiB
