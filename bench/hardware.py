"""What CPU this process runs on, read once from /proc/cpuinfo (no torch: tracking tags runs with it).

bench.device decides precision from these facts; every run records ``cpu_description()`` as its
``bench_cpu`` tag and every benchmark prints it, because a timing means little without the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache


# The ISA features oneDNN and ATen pick their kernels by: they decide speed, bf16, and float rounding.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cpus: int
    cores: int | None  # physical cores; None where /proc/cpuinfo does not say
    flags: frozenset[str]


def parse_cpuinfo(text: str, cpus: int) -> CpuInfo:
    """A /proc/cpuinfo text as a CpuInfo: physical cores are the distinct (physical id, core id)
    pairs, so two SMT threads of one core count once."""
    blocks = [dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines()))
              for block in text.split("\n\n") if block.strip()]  # one block per logical CPU
    first = blocks[0] if blocks else {}
    cores = {(b.get("physical id", "0"), b["core id"]) for b in blocks if "core id" in b}
    return CpuInfo(first.get("model name", "?"), cpus, len(cores) or None, frozenset(first.get("flags", "").split()))


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, not the machine's count.

    A Slurm allocation, ``taskset`` or a container cpuset restricts the mask while
    ``os.cpu_count()`` still says every CPU of the node; scheduling cells (``--jobs``, a local
    Ray) by the latter would start more threads than there are CPUs to run them.
    """
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity API (macOS)
        return os.cpu_count() or 1


@lru_cache(maxsize=None)
def cpu_info() -> CpuInfo:
    """This machine's CPU (model "?", no flags and unknown cores where /proc/cpuinfo is missing)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        text = ""
    return parse_cpuinfo(text, os.cpu_count() or 1)


def cpu_description() -> str:
    """One line for every timing and every run (tag ``bench_cpu``): model, CPUs, physical cores,
    the ISA flags that pick kernels, and any cap on them.

    The core count matters as much as the flags: a cloud "2 vCPU" machine is often one core's two
    SMT threads, which share one core's FMA units and so have half the arithmetic of two cores.
    """
    return describe(cpu_info(), os.environ.get("ONEDNN_MAX_CPU_ISA"), os.environ.get("ATEN_CPU_CAPABILITY"),
                    usable_cpus())


def describe(info: CpuInfo, onednn_cap: str | None = None, aten_cap: str | None = None,
             usable: int | None = None) -> str:
    have = [f for f in KERNEL_FLAGS if f in info.flags]
    cores = f"{info.cores} physical cores" if info.cores else "physical cores unknown"
    if usable is not None and usable != info.cpus:
        cores += f", {usable} usable by this process"
    capped = f"; emulated: oneDNN capped at {onednn_cap}, ATen at {aten_cap or '-'}" if onednn_cap else ""
    return f"{info.model}, {info.cpus} CPUs ({cores}), flags {' '.join(have) or 'none of avx2/avx512'}{capped}"
