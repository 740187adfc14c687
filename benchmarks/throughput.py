"""Train and eval throughput of the registered models, fp32 vs bf16 (not a test).

    python benchmarks/throughput.py [--models resnet18_28,resnet18_3d_s2] [--seconds 8] [--device cuda]

Numbers feed the time estimates in bench/executors/estimate.py (CPU_SPEED) and the suite headers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_epoch import cpu_line  # noqa: E402

from bench.models import MODELS, create_model, model_info
from bench.device import cpu_has_bf16, resolve_path
from bench.models import memory_format, to_memory_format


def measure(name: str, bf16: bool, train: bool, batch: int, seconds: float, size: int = 28,
            device: str = "cpu", path: str = "fast") -> float:
    dims = model_info(name).dims
    torch.manual_seed(0)
    model = create_model(name, 1, 1).to(device)
    x = torch.randn(batch, 1, *([size] * dims), device=device)
    y = torch.randint(0, 2, (batch, 1), device=device).float()
    fmt = memory_format(dims)
    xp = resolve_path("bf16" if bf16 else "fp32", path, torch.device(device), dims)  # the layout a cell would take
    if xp.channels_last:
        model, x = to_memory_format(model, dims), x.contiguous(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=xp.fused or None)
    model.train(train)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(train):
            out = model(x).float()
        if train:
            loss = F.binary_cross_entropy_with_logits(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # time finished work, not queued work
    step()  # warm-up
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += batch
    sync()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS.names()))
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--path", default="fast", choices=["fast", "plain"], help="execution path (bench/device.py)")
    args = ap.parse_args()
    rows = []
    bf16_ok = torch.cuda.is_bf16_supported() if args.device == "cuda" else cpu_has_bf16()
    precisions = [False, True] if bf16_ok else [False]
    for name in args.models.split(","):
        batch = 128 if model_info(name).dims == 2 else 16
        size = 64 if name == "resnet18" else 28  # the ImageNet-style ResNet is for MedMNIST+ sizes
        for bf16 in precisions:
            tr = measure(name, bf16, True, batch, args.seconds, size, args.device, args.path)
            ev = measure(name, bf16, False, batch * 4, args.seconds, size, args.device, args.path)
            rows.append([name, size, "bf16" if bf16 else "fp32", batch, f"{tr:.1f}", f"{ev:.1f}"])
            print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    print()
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, path {args.path}; CPU: {cpu_line()}")
    print(tabulate(rows, ["model", "px", "precision", "train batch", "train img/s", "eval img/s"]))


if __name__ == "__main__":
    main()
