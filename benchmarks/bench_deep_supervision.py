"""What deep supervision costs per training step: the demo's UNet against DynUNet (nnU-Net's architecture, the one
MONAI network with deep supervision) with the same widths, with and without its extra heads, timed side by side.

    python benchmarks/bench_deep_supervision.py [--device cpu|cuda] [--steps 5] [--patch 48 48 32] [--patches 12]

Each network takes ``--patches`` random patches of ``--patch`` voxels (x, y, z) per step (the demo: 2 volumes x 6
patches of 48x48x32) through forward, :func:`monai_pipeline.training.build_loss` of its configuration (DiceCE,
over every head when deeply supervised), backward and an AdamW step, in float32. Printed: parameters, the median
seconds of a step after one warm-up step, and each network's ratio to the UNet.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

WIDTHS = [16, 32, 64, 128]


def configurations() -> dict[str, dict]:
    """The networks compared (network sections of a configuration)."""
    dyn = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "kernel_size": [3] * len(WIDTHS),
           "strides": [1] + [2] * (len(WIDTHS) - 1), "upsample_kernel_size": [2] * (len(WIDTHS) - 1),
           "filters": WIDTHS, "norm_name": "batch", "res_block": True}
    return {
        "UNet (demo)": {"name": "UNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                   "channels": WIDTHS, "strides": [2] * (len(WIDTHS) - 1),
                                                   "num_res_units": 1, "norm": "batch"}},
        "DynUNet": {"name": "DynUNet", "kwargs": dyn},
        "DynUNet + deep supervision (2 heads)": {"name": "DynUNet",
                                                 "kwargs": {**dyn, "deep_supervision": True, "deep_supr_num": 2}},
    }


def step_seconds(network: dict, patch: list[int], patches: int, steps: int, device: str) -> tuple[int, float]:
    """Parameters and the median seconds of one training step of ``network``."""
    from monai_pipeline.config import load_config
    from monai_pipeline.networks import build_network
    from monai_pipeline.training import build_loss

    cfg = load_config({"network": network})
    net = build_network(cfg.network).to(device).train()
    loss_fn = build_loss(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(patches, 1, *patch, generator=gen).to(device)
    y = (torch.rand(patches, 1, *patch, generator=gen) > 0.9).float().to(device)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sum(p.numel() for p in net.parameters()), statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--patch", type=int, nargs=3, default=[48, 48, 32])
    ap.add_argument("--patches", type=int, default=12)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.patches} x {'x'.join(map(str, args.patch))} patches per step, float32")
    base = None
    print("| network | parameters | s/step | vs UNet |\n| --- | ---: | ---: | ---: |")
    for name, network in configurations().items():
        n, sec = step_seconds(network, args.patch, args.patches, args.steps, args.device)
        base = base or sec
        print(f"| {name} | {n:,} | {sec:.2f} | {sec / base:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
