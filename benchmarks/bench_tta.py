"""Mirroring TTA variants against the truth: how the ``tta_scope: candidates`` constants were chosen.

    python benchmarks/bench_tta.py [--model demo_output/run/model.pt] IMAGE [IMAGE ...]

For each image (a NIfTI with ``<stem>_label.nii.gz`` beside it, or a demo case ``.../images/X.nii.gz`` with
``.../labels/X.nii.gz``): the plain pass once, then each variant's probabilities -> the same export step as
``infer`` (resampling, lung filter, post-processing) -> Dice against the truth, with the time the mirrored
passes took (for the configured scope, its own plain pass included). Variants: no TTA; mirroring the whole
volume; the project's ``candidates`` scope as configured; and tight crops for a grid of (candidate probability,
edge voxels, context voxels), crops rounded to 8 voxels, each region keeping its own crop's result (the
experiment before the choice; the chosen setting is ``inferers.TTA_*``). The last lines are the per-variant
means.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

GRID = [(0.05, 4, 16), (0.05, 4, 8), (0.05, 2, 12), (0.2, 4, 16), (0.2, 2, 12), (0.5, 4, 16), (0.5, 2, 12),
        (0.05, 16, 0)]


def label_path(image: Path) -> Path:
    if image.parent.name == "images":
        return image.parent.parent / "labels" / image.name
    return image.with_name(image.name.replace(".nii.gz", "_label.nii.gz"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def main() -> None:
    from monai.inferers import sliding_window_inference

    from monai_pipeline.inference.export import export_prediction
    from monai_pipeline.inference.predictor import Predictor
    from monai_pipeline.inferers import autocast_context, mirrorings, tta_crops
    from monai_pipeline.io.geometry import sitk_to_xyz_array

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--model", type=Path, default=Path("demo_output/run/model.pt"))
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    p = Predictor(a.model, device="cpu", inference={"tta": False})
    inf = p.cfg.inference
    flips = mirrorings(tuple(inf.tta_axes))

    def run(x: torch.Tensor) -> torch.Tensor:
        roi = tuple(min(r, s) for r, s in zip(inf.roi_size, x.shape[2:], strict=True))
        with autocast_context(torch.device("cpu"), inf.bf16):
            out = sliding_window_inference(x, roi, inf.sw_batch_size, p.network, overlap=inf.overlap, mode=inf.mode,
                                           sigma_scale=inf.sigma_scale)
        return torch.softmax(out.float(), 1)

    def tight(x: torch.Tensor, plain: torch.Tensor, thr: float, edge: int, margin: int) -> torch.Tensor:
        out = plain.clone()
        for crop, region in tta_crops(plain[0, 1], thr, edge, margin, multiple=8):
            sub = (slice(None), slice(None), *crop)
            acc = plain[sub].clone()
            for axes in flips[1:]:
                acc += torch.flip(run(torch.flip(x[sub], axes)), axes)
            out[sub] = torch.where(region[None, None], acc / len(flips), out[sub])
        return out

    variants = [("none",), ("whole volume",), ("configured candidates",)] + [("tight",) + g for g in GRID]
    results: dict[str, list[float]] = {}
    for image in a.images:
        truth = sitk_to_xyz_array(sitk.ReadImage(str(label_path(image))))
        d = p.load(image)
        x = d["image"].as_tensor()[None]
        plain = run(x)
        for v in variants:
            t0 = time.perf_counter()
            if v[0] == "none":
                probs = plain
            elif v[0] == "whole volume":
                probs = plain.clone()
                for axes in flips[1:]:
                    probs += torch.flip(run(torch.flip(x, axes)), axes)
                probs /= len(flips)
            elif v[0] == "configured candidates":
                from monai_pipeline.inferers import ProbabilityInferer

                probs = ProbabilityInferer(p.cfg.merged({"inference": {"tta": True}}), "cpu")(x, p.network)
            else:
                probs = tight(x, plain, *v[1:])
            seconds = time.perf_counter() - t0
            pred = export_prediction(probs[0], d["image"].affine, d["original"], p.cfg, image.name)
            dc = dice(pred.mask, truth)
            results.setdefault(str(v), []).append(dc)
            print(f"{image.name} {v}: Dice {dc:.4f}, {seconds:.2f} s", flush=True)
    print("\nmean Dice per variant:")
    for k, v in results.items():
        print(f"{k}: {np.mean(v):.4f} ({' '.join(f'{x:.4f}' for x in v)})")


if __name__ == "__main__":
    main()
