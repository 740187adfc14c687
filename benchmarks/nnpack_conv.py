"""Would Winograd convolutions beat oneDNN on ResNet-18 (28)'s shapes? NNPACK vs oneDNN (not a test).

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/nnpack_conv.py

A direct convolution is bounded by the CPU's fp32 rate (benchmarks/roofline.py); Winograd and FFT
algorithms do fewer multiplications for the same result, so they are the one way past that
bound that keeps the model and its arithmetic type. torch ships NNPACK (AVX2 kernels only, so
the same code runs on a Zen 3), but in torch 2.14.1 its op ``torch._nnpack_spatial_convolution``
fails ("NNPACK SpatialConvolution_updateOutput failed") and torch never selects it for training.
This script calls NNPACK's C entry point ``nnp_convolution_output`` (exported by libtorch_cpu)
directly, on each stride-1 3x3 shape of the model at batch 128, with a 2-thread pthreadpool,
and prints its forward time and largest error beside oneDNN's (NCHW and channels-last).
"""
from __future__ import annotations

import ctypes
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_epoch import cpu_line  # noqa: E402

ALGORITHMS = {"auto": 0, "fft16x16": 2, "winograd8x8": 3}  # enum nnp_convolution_algorithm


class Size(ctypes.Structure):
    _fields_ = [("width", ctypes.c_size_t), ("height", ctypes.c_size_t)]


class Padding(ctypes.Structure):
    _fields_ = [("top", ctypes.c_size_t), ("right", ctypes.c_size_t), ("bottom", ctypes.c_size_t),
                ("left", ctypes.c_size_t)]


def nnpack():
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    if lib.nnp_initialize() != 0:
        raise SystemExit("nnp_initialize failed: NNPACK does not support this CPU")
    f = lib.nnp_convolution_output
    f.restype = ctypes.c_int
    f.argtypes = ([ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t, Size, Padding, Size]
                  + [ctypes.c_void_p] * 6 + [ctypes.c_int] + [ctypes.c_void_p] * 3)
    lib.pthreadpool_create.restype = ctypes.c_void_p
    lib.pthreadpool_create.argtypes = [ctypes.c_size_t]
    return f, ctypes.c_void_p(lib.pthreadpool_create(torch.get_num_threads()))


def median_seconds(fn, repeats: int = 5) -> float:
    fn(), fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[repeats // 2]


def main() -> None:
    conv, pool = nnpack()
    batch = 128
    print(f"CPU: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads; batch {batch}, forward, ms")
    for c, hw in [(64, 28), (128, 14), (256, 7), (512, 4)]:
        x = torch.randn(batch, c, hw, hw)
        w = torch.randn(c, c, 3, 3) * 0.05
        bias, y = torch.zeros(c), torch.empty(batch, c, hw, hw)
        xc, wc = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
        with torch.no_grad():
            ref = F.conv2d(x, w, padding=1)
            row = (f"{c}->{c} {hw}x{hw}: oneDNN NCHW {median_seconds(lambda: F.conv2d(x, w, padding=1)) * 1e3:6.1f}, "
                   f"channels-last {median_seconds(lambda: F.conv2d(xc, wc, padding=1)) * 1e3:6.1f}")
        for name, alg in ALGORITHMS.items():
            def call(alg=alg):
                return conv(alg, batch, c, c, Size(hw, hw), Padding(1, 1, 1, 1), Size(3, 3), x.data_ptr(),
                            w.data_ptr(), bias.data_ptr(), y.data_ptr(), None, None, 0, None, pool, None)
            status = call()
            if status:
                row += f" | NNPACK {name}: status {status}"
                continue
            row += f" | NNPACK {name} {median_seconds(call) * 1e3:6.1f} (max err {(y - ref).abs().max().item():.0e})"
        print(row)


if __name__ == "__main__":
    main()
