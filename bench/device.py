"""Where a model runs and in which precision: one policy for training, scoring and rescoring."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from bench.hardware import cpu_info
from bench.registry import Registry

log = logging.getLogger(__name__)


def select_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) below the first one with bf16 dot products
_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls are native, so autocast pays off (~1.8x here)."""
    # oneDNN capped below AVX-512 (ONEDNN_MAX_CPU_ISA=AVX2, say, to reproduce a Zen 3 here) has
    # no native bf16 kernels whatever the CPU: bf16 would then be emulated, ~40x slower (measured)
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ISAS_WITHOUT_BF16:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & cpu_info().flags)


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


# --------------------------------------------------------------------------- execution paths
#
# How a cell's arithmetic is laid out on the machine: the memory layout of activations and
# weights, and whether the optimizer step is one fused kernel. A path never changes *what* is
# computed, only in which order floating-point sums are taken, so it is not part of a cell's id
# (like the device); the run records the path it took (tag ``path``), and
# tests/test_fastpath.py holds the two paths to the same AUC on a short real run.
#
# Why channels-last in fp32 too: oneDNN's convolutions work in NHWC and reorder NCHW tensors
# around every call. Measured with benchmarks/profile_epoch.py on a 2-core AMD EPYC (Zen 4),
# ResNet-18 (28) training, fp32, batch 128: 61 -> 75 img/s with oneDNN capped at AVX2
# (ONEDNN_MAX_CPU_ISA=AVX2, the Zen 3 instruction set), 115 -> 129 img/s with AVX-512;
# ResNet-18 3D tiny: 76 -> 95 vol/s. torch.compile (inductor, CPU) was measured too and not
# taken: 71-73 img/s at AVX2 after 17-36 s of compilation per process.

PATHS: Registry = Registry("execution path")


@dataclass(frozen=True)
class ExecPath:
    """A resolved execution path: where, in which precision, in which layout, which optimizer kernel."""

    device: torch.device
    bf16: bool
    channels_last: bool  # activations and weights channels-last, where the model's kernels take it
    fused: bool  # the optimizer step as one fused kernel, where torch has one (Adam, AdamW, SGD)
    name: str = "fast"

    @property
    def label(self) -> str:
        """What the run records, e.g. ``fast: cpu fp32 channels_last fused-optim 2 threads``."""
        parts = [self.device.type, "bf16" if self.bf16 else "fp32", "channels_last" if self.channels_last else "contiguous"]
        if self.fused:
            parts.append("fused-optim")
        if self.device.type == "cpu":
            parts.append(f"{torch.get_num_threads()} threads")
        return f"{self.name}: {' '.join(parts)}"


@PATHS.register("fast", description="channels-last layout everywhere, fused optimizer steps (default)")
def _fast(bf16: bool, device: torch.device, dims: int) -> dict:
    return dict(channels_last=True, fused=True)


@PATHS.register("plain", description="the reference path: contiguous fp32 layout, unfused optimizer steps "
                                       "(channels-last only under bf16, as before the fast path)")
def _plain(bf16: bool, device: torch.device, dims: int) -> dict:
    return dict(channels_last=bf16, fused=False)


def resolve_path(precision: str, path: str = "fast", device: torch.device | None = None, dims: int = 2) -> ExecPath:
    """The one place a cell's precision and path settings become what it runs with."""
    device = device or select_device()
    bf16 = use_bf16(precision, device, dims)
    return ExecPath(device, bf16, name=path, **PATHS.get(path)(bf16, device, dims))
