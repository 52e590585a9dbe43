"""Shared pieces of the benchmarks: the benchmark volume, a model, FLOP counting, peak memory."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def peak_rss_gb() -> float:
    """Peak resident set size of this process (GB); ru_maxrss is in KiB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def make_volume(out: Path, n_slices: int = 300, seed: int = 42) -> tuple[Path, Path]:
    """A synthetic 512 x 512 x n chest CT at 0.7 x 0.7 x 1.25 mm with nodules (NIfTI image and label)."""
    import SimpleITK as sitk

    from monai_pipeline.data.synthetic import SynthConfig, generate_case

    img, lab = out / f"bench_{n_slices}.nii.gz", out / f"bench_{n_slices}_label.nii.gz"
    if not img.exists():
        cfg = SynthConfig(matrix=512, spacing_xy=(0.7, 0.7), spacing_z=(1.25, 1.25), extent_z_mm=n_slices * 1.25,
                          n_nodules=(4, 5), diameter_mm=(5.0, 25.0))
        case = generate_case(seed, cfg, orientation="axial_hf")
        assert case.image.GetSize() == (512, 512, n_slices), case.image.GetSize()
        sitk.WriteImage(case.image, str(img))
        sitk.WriteImage(case.label, str(lab))
    return img, lab


def flops_per_voxel(network: torch.nn.Module, roi: tuple[int, int, int]) -> float:
    """FLOPs of one forward pass of ``network`` on a ``roi`` window, per input voxel (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, *roi)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        network(x)
    return fc.get_total_flops() / float(np.prod(roi))


class VoxelCounter(torch.nn.Module):
    """Wraps a network and counts the input voxels it is fed (windows x batch x window size)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.voxels = 0

    def forward(self, x):
        self.voxels += int(x.shape[0]) * int(np.prod(x.shape[2:]))
        return self.net(x)


def run_child(script: Path, *args: str) -> dict:
    """Run ``script --child ...`` in a fresh interpreter (own peak RSS) and parse its last JSON line."""
    t0 = time.time()
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_s"] = time.time() - t0
    return res


def ensure_model(path: Path | None) -> Path:
    """The demo's trained model (``make demo``), or train one the same way if it is missing."""
    path = path or REPO / "demo_output" / "run" / "model.pt"
    if not path.exists():
        from monai_pipeline.demo import run_demo

        print(f"no trained model at {path}: running the demo once to train one", flush=True)
        run_demo(path.parent.parent)
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    s = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if s == 0 else 2.0 * int(np.count_nonzero(a & b)) / s
