"""bench.hardware: the CPU line every run (tag bench_cpu) and every benchmark carries."""
from bench.hardware import cpu_description, describe, parse_cpuinfo


def _block(processor: int, core: int, physical: int = 0, flags: str = "fpu avx2 fma") -> str:
    return (f"processor\t: {processor}\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
            f"physical id\t: {physical}\ncore id\t\t: {core}\nflags\t\t: {flags}\n\n")


def test_two_smt_threads_of_one_core_count_as_one_physical_core():
    info = parse_cpuinfo(_block(0, 0) + _block(1, 0), cpus=2)
    assert info.cores == 1 and info.cpus == 2
    line = describe(info)
    assert line == "AMD EPYC 7763 64-Core Processor, 2 CPUs (1 physical cores), flags avx2"


def test_the_same_core_id_on_two_sockets_is_two_cores():
    assert parse_cpuinfo(_block(0, 0, 0) + _block(1, 0, 1), cpus=2).cores == 2


def test_flags_that_pick_kernels_and_an_isa_cap_are_named():
    info = parse_cpuinfo(_block(0, 0, flags="avx2 avx512f avx512_bf16") + _block(1, 1, flags="avx2 avx512f avx512_bf16"), 2)
    line = describe(info, "AVX2", "avx2")
    assert "(2 physical cores), flags avx2 avx512f avx512_bf16; emulated: oneDNN capped at AVX2, ATen at avx2" in line


def test_a_machine_without_cpuinfo_still_gets_a_line():
    info = parse_cpuinfo("", cpus=4)
    assert info.cores is None and info.model == "?"
    assert describe(info) == "?, 4 CPUs (physical cores unknown), flags none of avx2/avx512"


def test_this_machine_has_a_line():
    assert " CPUs (" in cpu_description()


def _under_one_cpu(code: str) -> str:
    """Run ``code`` in a fresh interpreter whose affinity mask is CPU 0 only (as under taskset or Slurm)."""
    import subprocess
    import sys

    pre = "import os\nos.sched_setaffinity(0, {0})\n"
    return subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True, check=True).stdout.strip()


def test_usable_cpus_follow_the_affinity_mask_not_the_machine():
    import os

    import pytest

    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs an affinity API and 2 CPUs")
    out = _under_one_cpu("from bench.hardware import usable_cpus, cpu_description\nprint(usable_cpus())\n"
                         "print(cpu_description())")
    usable, line = out.splitlines()
    assert usable == "1"
    assert f"{os.cpu_count()} CPUs (" in line and "1 usable by this process" in line


def test_jobs_and_the_local_cluster_schedule_on_the_usable_cpus():
    import os

    import pytest

    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs an affinity API and 2 CPUs")
    out = _under_one_cpu("from bench.executors import get_executor, local_cluster\n"
                         "print(get_executor('local', jobs=2).cluster().cpus, local_cluster().cpus)")
    assert out == "1.0 1.0"
