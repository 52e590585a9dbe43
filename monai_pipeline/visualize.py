"""Pictures people would rather look at: CT slices (PNG), prediction/truth contour overlays, training curves.

Slices are shown in the radiological convention: axial, anterior up, the patient's left on the right of
the picture (volumes are first reoriented to LPS with SimpleITK, so any stored orientation shows the same).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monai_pipeline.io.geometry import sitk_to_xyz_array
from monai_pipeline.io.writer import atomic_path

LUNG_WINDOW = (-1350.0, 150.0)  # HU: level -600, width 1500


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_lps_array(image: sitk.Image) -> np.ndarray:
    """(x, y, z) array of ``image`` reoriented so that x->left, y->posterior, z->superior."""
    return sitk_to_xyz_array(sitk.DICOMOrient(image, "LPS"))


def _axial(arr_xyz: np.ndarray, k: int) -> np.ndarray:
    return arr_xyz[:, :, k].T  # rows = y (anterior at top), columns = x (patient's left on the right)


def save_slices_png(image: sitk.Image, path: str | Path, n: int = 3, window: tuple[float, float] = LUNG_WINDOW,
                    label: sitk.Image | None = None) -> Path:
    """Save ``n`` evenly spaced axial slices side by side (HU window ``window``), label contours in red."""
    plt = _plt()
    arr = to_lps_array(image)
    lab = to_lps_array(label) if label is not None else None
    nz = arr.shape[2]
    if lab is not None and lab.any():
        zs = np.nonzero(lab.any(axis=(0, 1)))[0]
        ks = [int(zs[len(zs) // 2])] + [int(v) for v in np.linspace(0.25 * nz, 0.75 * nz, n - 1)]
    else:
        ks = [int(v) for v in np.linspace(0.2 * nz, 0.8 * nz, n)]
    sx, sy, _ = sitk.DICOMOrient(image, "LPS").GetSpacing()
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4), dpi=80)
    for ax, k in zip(np.atleast_1d(axes), ks, strict=False):
        ax.imshow(_axial(arr, k), cmap="gray", vmin=window[0], vmax=window[1], aspect=sy / sx)
        if lab is not None and lab[:, :, k].any():
            ax.contour(_axial(lab, k) > 0, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"slice {k}/{nz}")
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def save_overlays_png(image: sitk.Image, pred: sitk.Image, truth: sitk.Image | None, path: str | Path,
                      max_lesions: int = 6, window: tuple[float, float] = LUNG_WINDOW) -> Path:
    """One panel per lesion (prediction green, ground truth red), through the lesion's central slice."""
    from scipy import ndimage

    plt = _plt()
    arr, pr = to_lps_array(image), to_lps_array(pred) > 0
    tr = to_lps_array(truth) > 0 if truth is not None else np.zeros_like(pr)
    lab, n = ndimage.label(pr | tr)
    objs = ndimage.find_objects(lab)
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1)) if n else []
    order = np.argsort(sizes)[::-1][:max_lesions] if n else []
    sx, sy, _ = sitk.DICOMOrient(image, "LPS").GetSpacing()
    panels = max(1, len(order))
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.4), dpi=90)
    for ax, idx in zip(np.atleast_1d(axes), order, strict=False):
        sl = objs[idx]
        k = (sl[2].start + sl[2].stop) // 2
        pad = 25
        xs = slice(max(0, sl[0].start - pad), sl[0].stop + pad)
        ys = slice(max(0, sl[1].start - pad), sl[1].stop + pad)
        ax.imshow(_axial(arr[xs, ys], k), cmap="gray", vmin=window[0], vmax=window[1], aspect=sy / sx)
        if tr[xs, ys, k].any():
            ax.contour(_axial(tr[xs, ys], k), levels=[0.5], colors="red", linewidths=1.2)
        if pr[xs, ys, k].any():
            ax.contour(_axial(pr[xs, ys], k), levels=[0.5], colors="lime", linewidths=1.0, linestyles="--")
        ax.set_title(f"lesion {idx + 1}, slice {k}", fontsize=9)
        ax.axis("off")
    if not len(order):
        np.atleast_1d(axes)[0].text(0.5, 0.5, "no lesion", ha="center")
        np.atleast_1d(axes)[0].axis("off")
    fig.suptitle("prediction (green dashed) vs ground truth (red)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
