"""How fast can one fp32 BreastMNIST epoch be on this CPU? A roofline check (not a test).

    python benchmarks/roofline.py [--model resnet18_28] [--official-wall 5:85 30:436]

Three measured quantities, one division each:

1. **Arithmetic of one epoch.** Every ``Conv2d``/``Linear`` of the model is hooked during one
   forward pass of a real batch; its multiply-adds are counted *without* the taps that fall on
   zero padding (so the figure is the minimum a direct convolution must do, not what a padded
   im2col does). A training image costs forward + input gradient + weight gradient (the first
   convolution has no input gradient: images need none); a validation image one forward.
   BatchNorm, ReLU and the optimizer are left out (they are ~4% of a profiled epoch), which
   makes the bound below a *lower* bound.
2. **The ceiling.** The best fp32 rate this process reaches on a large square ``torch.mm``
   (MKL sgemm, the densest kernel there is) at the run's thread count; and, for comparison,
   oneDNN's time for each of the model's own convolutions at batch 128, alone, in both layouts.
3. **A real epoch** of ``bench.train.fit`` (CE, batch 128, the real training split; the last of
   ``--epochs``), on the path asked for.

Then: attained rate = arithmetic / epoch time, and the fastest possible epoch = arithmetic /
ceiling. ``--official-wall EPOCHS:SECONDS`` (the official script's median wall time from
``benchmarks/vs_official.py``) turns the issue's "2x the official script" into the epoch time it
requires even with zero start-up and test scoring, so the two can be compared directly.

Winograd and FFT convolutions do fewer multiplications than a direct one and are outside this
bound; NNPACK's Winograd/FFT (shipped in torch, AVX2 kernels) was measured on these shapes by
``benchmarks/nnpack_conv.py`` and is no faster than oneDNN's channels-last convolutions (README, Speed).

Run it under the AVX2 cap to see a Zen 3 (figures say which): ``ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/roofline.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_epoch import FLAG, cpu_line  # noqa: E402


def valid_taps(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Sum over output positions of the kernel taps that land inside the input (not on padding)."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    total = 0
    for o in range(out):
        start = o * stride - pad
        total += sum(1 for k in range(kernel) if 0 <= start + k * dilation < size)
    return total


class Layer(NamedTuple):
    """A Conv2d or Linear as one forward pass of ``x`` met it (conv fields are None for a Linear)."""

    macs: int  # forward multiply-adds, padding taps left out
    dgrad: bool  # needs an input gradient (False for the layers that see the images)
    shape: tuple | None = None  # conv input (n, c, h, w)
    cout: int | None = None
    kernel: int | None = None
    stride: int | None = None
    pad: int | None = None


def layers(model: nn.Module, x: torch.Tensor) -> list[Layer]:
    """Every Conv2d and Linear of ``model``, in forward order, from one hooked pass of ``x``."""
    found: list[Layer] = []

    def conv_hook(mod: nn.Conv2d, inp, _out):
        t = inp[0]
        n, cin, h, w = t.shape
        taps = (valid_taps(h, mod.kernel_size[0], mod.stride[0], mod.padding[0], mod.dilation[0])
                * valid_taps(w, mod.kernel_size[1], mod.stride[1], mod.padding[1], mod.dilation[1]))
        found.append(Layer(n * mod.out_channels * (cin // mod.groups) * taps, t is not x, tuple(t.shape),
                           mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0]))

    def linear_hook(mod: nn.Linear, inp, _out):
        t = inp[0]
        found.append(Layer(t.numel() // t.shape[-1] * mod.in_features * mod.out_features, True))

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return found


def count_macs(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(forward MACs, input-gradient MACs, weight-gradient MACs) of one batch ``x``.

    The input gradient of a layer costs what its forward costs, except for the layers that see
    the images (no gradient is needed there); the weight gradient costs what its forward costs.
    """
    found = layers(model, x)
    fwd = sum(la.macs for la in found)
    return fwd, sum(la.macs for la in found if la.dgrad), fwd


def best_seconds(fn, repeats: int = 5) -> float:
    """Best of ``repeats`` timed calls after two warm-ups."""
    fn(), fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


LAYOUTS = {"channels-last": torch.channels_last, "NCHW": torch.contiguous_format}


def conv_times(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Each convolution of the model at batch ``len(x)``, timed alone with oneDNN in each layout.

    One dict per convolution, in model order: its shape, forward and training MACs, and per layout
    the seconds of a forward pass and of forward+backward -- the epoch's convolutions if nothing
    else took any time. Taking the faster layout per convolution (and per pass) is what a
    hand-tuned mixed-layout model could at best do, conversions free.
    """
    cache: dict[Layer, dict[str, tuple[float, float]]] = {}  # equal shapes are timed once
    out = []
    for la in (la for la in layers(model, x) if la.shape is not None):
        (n, cin, h, w), cout, k, stride, pad, dgrad = la.shape, la.cout, la.kernel, la.stride, la.pad, la.dgrad
        if la not in cache:
            cache[la] = {}
            for layout, fmt in LAYOUTS.items():
                inp = torch.randn(n, cin, h, w).contiguous(memory_format=fmt).requires_grad_(dgrad)
                wt = torch.randn(cout, cin, k, k).contiguous(memory_format=fmt).requires_grad_()
                with torch.no_grad():
                    fwd = best_seconds(lambda: F.conv2d(inp, wt, stride=stride, padding=pad))
                grad = torch.randn_like(F.conv2d(inp, wt, stride=stride, padding=pad))
                both = best_seconds(lambda: F.conv2d(inp, wt, stride=stride, padding=pad).backward(grad))
                cache[la][layout] = (fwd, both)
        out.append({"name": f"{cin}->{cout} k{k} {h}x{w} s{stride}", "fwd_macs": la.macs,
                    "train_macs": la.macs * (3 if dgrad else 2), "times": cache[la]})
    return out


def epoch_seconds(convs: list[dict], n_train: int, n_val: int, batch: int, layout: str | None) -> float:
    """The convolutions of one epoch at the timed rates: in ``layout``, or the faster one of each pass."""
    def pick(c, i):
        return c["times"][layout][i] if layout else min(t[i] for t in c["times"].values())

    return (sum(pick(c, 1) for c in convs) * n_train + sum(pick(c, 0) for c in convs) * n_val) / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18_28")
    ap.add_argument("--path", default="fast", choices=["fast", "plain"])
    ap.add_argument("--epochs", type=int, default=2, help="the last one is timed; the first warms up")
    ap.add_argument("--official-wall", nargs="*", default=["5:85", "30:436"], metavar="EPOCHS:SECONDS",
                    help="the official script's median wall time (benchmarks/vs_official.py) to translate "
                         "'2x faster' into a per-epoch time")
    ap.add_argument("--data-dir", default=os.environ.get("BENCH_DATA_DIR", "../shared/data/medmnist"))
    args = ap.parse_args()

    from bench import data as D
    from bench.config import base_config, expand
    from bench.models import create_model
    from bench.suitefile import deep_merge, suites_dir
    from bench.train import fit

    data = D.load(FLAG, args.data_dir, download=False)
    proto = D.make_protocol(data, "official", None)
    n_train, n_val = len(proto.train), len(proto.val)
    model = create_model(args.model, in_channels=1, num_outputs=1).eval()
    one = torch.zeros(1, 1, 28, 28)
    fwd, dgrad, wgrad = count_macs(model, one)
    train_flops = 2 * (fwd + dgrad + wgrad) * n_train
    val_flops = 2 * fwd * n_val
    epoch_flops = train_flops + val_flops

    a = torch.randn(4096, 4096)
    b = torch.randn(4096, 4096)
    sgemm = max(2 * 4096 ** 3 / best_seconds(lambda: a @ b),
                2 * 2048 ** 3 / best_seconds(lambda: a[:2048, :2048] @ b[:2048, :2048]))
    batch = 128  # the paper's batch: rates depend on it
    convs = conv_times(model, torch.zeros(batch, 1, 28, 28))
    conv_cl = epoch_seconds(convs, n_train, n_val, batch, "channels-last")
    conv_nchw = epoch_seconds(convs, n_train, n_val, batch, "NCHW")
    conv_epoch = epoch_seconds(convs, n_train, n_val, batch, None)

    over = {"grid": {"dataset": [FLAG], "recipe": ["ce"], "aug": [False], "seed": [0], "protocol": ["official"]},
            "train": {"epochs": args.epochs, "precision": "fp32", "path": args.path}}
    cell = expand(deep_merge(base_config(), over), suites_dir() / "_base.yaml", lambda f, size=None: "")[0]
    epochs: list[float] = []
    fit(cell, proto, data.spec, data.sampler_label, data.positive_label, device=torch.device("cpu"),
        on_epoch=lambda r: epochs.append(r["epoch_seconds"]), progress=False)
    epoch = epochs[-1]

    g = 1e9
    print(f"CPU: {cpu_line()}; MKL cap {os.environ.get('MKL_ENABLE_INSTRUCTIONS', '-')}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model {args.model}, {FLAG}: per image forward {2 * fwd / g:.3f} GFLOP, training step "
          f"{2 * (fwd + dgrad + wgrad) / g:.3f} GFLOP (padding taps excluded)")
    print(f"epoch arithmetic: {n_train} training images {train_flops / 1e12:.3f} TFLOP + {n_val} validation "
          f"images {val_flops / 1e12:.3f} TFLOP = {epoch_flops / 1e12:.3f} TFLOP")
    print(f"ceiling: MKL sgemm {sgemm / g:.0f} GFLOP/s (the fastest dense fp32 kernel in this process)")
    for layout in LAYOUTS:
        print(f"oneDNN, {layout}, each convolution shape alone at batch {batch}, GFLOP/s forward/training step: "
              + ", ".join(dict.fromkeys(
                  f"{c['name']} {2 * c['fwd_macs'] / c['times'][layout][0] / g:.0f}/"
                  f"{2 * c['train_macs'] / c['times'][layout][1] / g:.0f}" for c in convs)))
    print(f"the model's convolutions alone at those rates, per epoch: channels-last {conv_cl:.2f} s, NCHW "
          f"{conv_nchw:.2f} s, the faster layout of each pass of each convolution (conversions free) "
          f"{conv_epoch:.2f} s ({epoch_flops / conv_epoch / g:.0f} GFLOP/s): the floor with today's kernels")
    print(f"measured epoch ({args.path} path, fp32): {epoch:.2f} s = {epoch_flops / epoch / g:.0f} GFLOP/s "
          f"attained, {epoch_flops / epoch / sgemm:.0%} of the sgemm ceiling")
    floor = epoch_flops / sgemm
    print(f"fastest possible epoch at the sgemm ceiling: {floor:.2f} s (the measured one is {epoch / floor:.2f}x that)")
    targets = [(f"2x the official script at {n} epochs ({wall} s)", float(wall) / 2 / int(n))
               for n, wall in (item.split(":") for item in args.official_wall)] + [("an 8 s epoch", 8.0)]
    for what, need in targets:
        print(f"{what}: <= {need:.2f} s per epoch (zero start-up and test scoring granted), "
              f"{epoch_flops / need / g:.0f} GFLOP/s = {epoch_flops / need / sgemm:.0%} of the sgemm ceiling; "
              f"{'above' if need > conv_epoch else 'BELOW'} the convolutions-alone floor ({conv_epoch:.2f} s), "
              f"{'above' if need > floor else 'BELOW'} the sgemm floor ({floor:.2f} s)")


if __name__ == "__main__":
    main()
