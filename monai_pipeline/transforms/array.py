"""Array transforms (channel-first ``(C, X, Y, Z)`` arrays, values in HU unless stated)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import convert_to_tensor


class HUThreshold:
    """``select_fn`` for ``CropForeground``: True where the image exceeds ``threshold_hu`` (the body in CT).

    A class rather than a lambda so that it pickles (multiprocess loaders, ``PersistentDataset`` hashing).
    """

    def __init__(self, threshold_hu: float = -500.0):
        self.threshold_hu = float(threshold_hu)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return img > self.threshold_hu

    def bounding_box(self, img: NdarrayOrTensor) -> tuple[slice, ...] | None:
        """Spatial box (x, y, z slices) of the selected voxels of a ``(C, X, Y, Z)`` image; None when empty."""
        from monai_pipeline.lungs import bounding_box

        sel = self(img)
        sel = sel.detach().cpu().numpy() if isinstance(sel, torch.Tensor) else np.asarray(sel)
        return bounding_box(sel.any(axis=0))

    def __repr__(self) -> str:
        return f"HUThreshold({self.threshold_hu})"


class LungSelect:
    """``select_fn`` for ``CropForeground``: the lungs, i.e. air (below ``threshold_hu``) enclosed by the body in
    its axial slice, so the crop keeps both lungs, the mediastinum between them and the pleura.

    Input ``(C, X, Y, Z)`` in HU on a RAS grid (z = axial slices). Air outside the body touches the slice border
    and is excluded; when no enclosed air is found (not a chest CT) the body (voxels above ``threshold_hu``) is
    returned instead, so the crop never comes out empty. ``stride`` subsamples in-plane: a crop needs a bounding
    box, not an exact contour (:meth:`bounding_box` never makes the full-size mask).
    """

    def __init__(self, threshold_hu: float = -500.0, min_voxels: int = 1000, stride: int = 1):
        self.threshold_hu = float(threshold_hu)
        self.min_voxels = int(min_voxels)
        self.stride = int(stride)

    def coarse(self, img: NdarrayOrTensor):
        """The selection as a :class:`~monai_pipeline.lungs.CoarseMask` of the spatial shape."""
        from monai_pipeline.lungs import CoarseMask, enclosed_air

        arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img)[0]
        f = (self.stride, self.stride, 1)
        small = arr[::f[0], ::f[1], :]
        enclosed = enclosed_air(small, self.threshold_hu, axis=2)
        if np.count_nonzero(enclosed) < max(1, self.min_voxels // self.stride ** 2):
            enclosed = small > self.threshold_hu
        return CoarseMask(enclosed, f, arr.shape)

    def bounding_box(self, img: NdarrayOrTensor) -> tuple[slice, ...] | None:
        """Spatial box (x, y, z slices) of the selection; None when nothing is selected."""
        return self.coarse(img).bounding_box()

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        out = self.coarse(img).full()[None]
        return torch.as_tensor(out) if isinstance(img, torch.Tensor) else out

    def __repr__(self) -> str:
        return f"LungSelect({self.threshold_hu})"


class CTNormalize(Transform):
    """nnU-Net CT normalisation: clip HU to [``lower``, ``upper``] (the 0.5/99.5 percentiles of foreground
    intensities of the training set), then ``(x - mean) / std`` with the foreground mean/std (HU).

    Input and output shape ``(C, X, Y, Z)``; output float32 (unitless z-scores).
    """

    backend = [torch.Tensor.__name__, np.ndarray.__name__]

    def __init__(self, mean: float, std: float, lower: float, upper: float):
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        if not lower < upper:
            raise ValueError(f"lower must be < upper, got {lower} >= {upper}")
        self.mean, self.std, self.lower, self.upper = float(mean), float(std), float(lower), float(upper)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        t = convert_to_tensor(img, track_meta=True, dtype=torch.float32)
        return (t.clamp(self.lower, self.upper) - self.mean) / self.std


def foreground_intensity_stats(images: list[np.ndarray], labels: list[np.ndarray], max_samples: int = 100_000,
                               seed: int = 0) -> dict[str, float]:
    """Foreground (label > 0) HU statistics over a training set, as nnU-Net's dataset fingerprint does:
    mean, std and the 0.5 / 99.5 percentiles of up to ``max_samples`` voxels sampled per case."""
    rng = np.random.default_rng(seed)
    samples = []
    for img, lab in zip(images, labels, strict=True):
        v = np.asarray(img)[np.asarray(lab) > 0]
        if v.size > max_samples:
            v = rng.choice(v, max_samples, replace=False)
        samples.append(v.astype(np.float64))
    allv = np.concatenate(samples) if samples else np.zeros(0)
    if allv.size < 2:
        raise ValueError("no foreground voxels in the training labels: cannot compute intensity statistics")
    return {"mean": float(allv.mean()), "std": float(allv.std()), "p00_5": float(np.percentile(allv, 0.5)),
            "p99_5": float(np.percentile(allv, 99.5))}


def check_same_geometry(data: Mapping[Hashable, object], keys: tuple[str, ...]) -> None:
    """Raise ``InputError`` naming the label file when image and label grids differ (shape or affine)."""
    from monai_pipeline.errors import InputError

    ref = data[keys[0]]
    for k in keys[1:]:
        other = data[k]
        if tuple(ref.shape[1:]) != tuple(other.shape[1:]):
            raise InputError(other.meta.get("filename_or_obj"), f"{k} shape {tuple(other.shape[1:])} differs "
                             f"from {keys[0]} shape {tuple(ref.shape[1:])} ({ref.meta.get('filename_or_obj')})")
        if not np.allclose(np.asarray(ref.affine), np.asarray(other.affine), atol=1e-3):
            raise InputError(other.meta.get("filename_or_obj"), f"{k} geometry (origin/spacing/direction) differs "
                             f"from {keys[0]} ({ref.meta.get('filename_or_obj')})")
