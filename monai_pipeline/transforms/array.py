"""Array transforms (channel-first ``(C, X, Y, Z)`` arrays, values in HU unless stated)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Spacing as MonaiSpacing
from monai.transforms import Transform
from monai.utils import convert_to_tensor

from monai_pipeline.arrays import bounding_box
from monai_pipeline.errors import InputError
from monai_pipeline.io.geometry import spacing_from_affine
from monai_pipeline.lungs import LUNG_RIM_MM, CoarseMask, lung_air


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

        sel = self(img)
        sel = sel.detach().cpu().numpy() if isinstance(sel, torch.Tensor) else np.asarray(sel)
        return bounding_box(sel.any(axis=0))

    def __repr__(self) -> str:
        return f"HUThreshold({self.threshold_hu})"


class LungSelect:
    """``select_fn`` for ``CropForeground``: the lungs (:func:`~monai_pipeline.lungs.lung_air`: air enclosed by the
    body in its axial slice, components of stomach and bowel gas and air against the skin left out), so the crop
    keeps both lungs, the mediastinum between them and the pleura.

    Input ``(C, X, Y, Z)`` in HU on a RAS grid (z = axial slices). When no lung is found (not a chest CT) the
    body (voxels above ``threshold_hu``) is returned instead, so the crop never comes out empty. The selection
    is computed on a grid of about ``resolution_mm`` (spacing from the image's affine, 1 mm without one): a crop
    needs a bounding box, not an exact contour (:meth:`bounding_box` never makes the full-size mask).
    """

    def __init__(self, threshold_hu: float = -500.0, resolution_mm: float = 3.0):
        self.threshold_hu = float(threshold_hu)
        self.resolution_mm = float(resolution_mm)

    def coarse(self, img: NdarrayOrTensor):
        """The selection as a :class:`~monai_pipeline.lungs.CoarseMask` of the spatial shape."""

        arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img)[0]
        spacing = spacing_from_affine(np.asarray(img.affine)) if hasattr(img, "affine") else (1.0, 1.0, 1.0)
        f = tuple(max(1, int(round(self.resolution_mm / s))) for s in spacing)
        small = arr[::f[0], ::f[1], ::f[2]]
        selected = lung_air(small, [s * k for s, k in zip(spacing, f, strict=True)], self.threshold_hu, axis=2)
        if not selected.any():  # not a chest CT: the body, at full resolution
            return CoarseMask(arr > self.threshold_hu, (1, 1, 1), arr.shape)
        return CoarseMask(selected, f, arr.shape)

    def bounding_box(self, img: NdarrayOrTensor) -> tuple[slice, ...] | None:
        """Spatial box (x, y, z slices) of the selection, widened by the lung rim
        (:data:`~monai_pipeline.lungs.LUNG_RIM_MM`: what the lung filter counts as lung beyond the air); None when
        nothing is selected."""

        box = self.coarse(img).bounding_box()
        if box is None:
            return None
        spacing = spacing_from_affine(np.asarray(img.affine)) if hasattr(img, "affine") else (1.0, 1.0, 1.0)
        shape = img.shape[1:]
        pad = [int(math.ceil(LUNG_RIM_MM / s)) for s in spacing]
        return tuple(slice(max(0, b.start - p), min(int(n), b.stop + p))
                     for b, p, n in zip(box, pad, shape, strict=True))

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

    ref = data[keys[0]]
    for k in keys[1:]:
        other = data[k]
        if tuple(ref.shape[1:]) != tuple(other.shape[1:]):
            raise InputError(other.meta.get("filename_or_obj"), f"{k} shape {tuple(other.shape[1:])} differs "
                             f"from {keys[0]} shape {tuple(ref.shape[1:])} ({ref.meta.get('filename_or_obj')})")
        if not np.allclose(np.asarray(ref.affine), np.asarray(other.affine), atol=1e-3):
            raise InputError(other.meta.get("filename_or_obj"), f"{k} geometry (origin/spacing/direction) differs "
                             f"from {keys[0]} ({ref.meta.get('filename_or_obj')})")


def _linear_along(x: torch.Tensor, dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``x`` sampled along ``dim`` at fractional ``positions`` (voxels; clamped to the array, as MONAI's
    ``border`` padding) by linear interpolation between the two neighbours."""
    n = x.shape[dim]
    pos = positions.clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    shape = [1] * x.dim()
    shape[dim] = -1
    w = (pos - lo).to(x.dtype).view(shape)
    return torch.lerp(x.index_select(dim, lo), x.index_select(dim, hi), w)


class ResampleToSpacing(Transform):
    """MONAI's ``Spacing`` (same output grid: shape, affine and the voxels it samples), with linear interpolation
    done as three 1D passes instead of ``grid_sample`` -- possible because changing the voxel size of a grid
    keeps its directions, so each output axis samples one input axis (about twice as fast: docs/performance.md;
    tested against MONAI's result). ``mode="nearest"`` (labels) is MONAI's own ``Spacing``.

    Input ``(C, X, Y, Z)`` MetaTensor; ``pixdim`` the target voxel size in mm (x, y, z); output float32 for
    ``bilinear``.
    """

    def __init__(self, pixdim, mode: str = "bilinear"):

        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be bilinear or nearest, got {mode!r}")
        self.mode = mode
        self.monai = MonaiSpacing(pixdim=pixdim, mode=mode, dtype=np.float32)
        self.grid = MonaiSpacing(pixdim=pixdim, mode=mode, dtype=np.float32, lazy=True)  # the output grid only

    def __call__(self, img):
        """``img`` resampled to ``pixdim`` mm voxels (a MetaTensor with the output grid's affine)."""

        if self.mode == "nearest" or not isinstance(img, MetaTensor):
            return self.monai(img)
        shell = MetaTensor(torch.zeros(1).expand(img.shape), affine=img.affine)  # no voxels: MONAI only plans
        pending = self.grid(shell)
        out_affine = np.asarray(pending.peek_pending_affine(), dtype=np.float64)
        out_shape = [int(s) for s in pending.peek_pending_shape()]
        t = np.linalg.inv(np.asarray(img.affine, dtype=np.float64)) @ out_affine  # output -> input voxel
        if not np.allclose(t[:3, :3], np.diag(np.diag(t[:3, :3])), atol=1e-6):
            return self.monai(img)  # not a pure change of voxel size (never seen): MONAI's resampling
        x = img.as_tensor().to(torch.float32)
        # the axis with the largest memory stride first: its gathers move whole contiguous blocks (faster for
        # volumes read in x-fastest order: docs/performance.md)
        for axis in sorted(range(3), key=lambda a: -x.stride(a + 1)):
            pos = torch.arange(out_shape[axis], dtype=torch.float64) * t[axis, axis] + t[axis, 3]
            x = _linear_along(x, axis + 1, pos)
        meta = dict(img.meta)
        meta.pop("affine", None)
        return MetaTensor(x.contiguous(), affine=torch.as_tensor(out_affine), meta=meta)
