"""Where a model runs and in which precision: one policy for training, scoring and rescoring."""
from __future__ import annotations

import logging
from functools import lru_cache

import torch

log = logging.getLogger(__name__)


def select_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls are native, so autocast pays off (~1.8x here)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device, dims: int = 2) -> bool:
    """Whether to train/evaluate under bf16 autocast.

    3D models on CPU always use fp32: in torch 2.14.1 the CPU bf16 Conv3d backward returns
    non-deterministic gradients (differences up to 1e37 between identical calls, measured
    here) and training turns NaN within a few steps. 2D convolutions in bf16 give identical
    gradients call after call, and are ~2x faster.
    """
    if precision == "fp32":
        return False
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = cpu_has_bf16() and dims == 2
    if precision == "bf16" and not supported:
        log.warning("bf16 requested but not reliable on %s for %dD models; using fp32", device, dims)
    return supported
