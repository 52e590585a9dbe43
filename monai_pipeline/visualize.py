"""Pictures people would rather look at: CT slices (PNG), prediction/truth contour overlays, training curves.

Slices are shown in the radiological convention: axial, anterior up, the patient's left on the right of
the picture (volumes are first reoriented to LPS with SimpleITK, so any stored orientation shows the same).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from monai_pipeline.io.geometry import sitk_to_xyz_array
from monai_pipeline.io.writer import atomic_path

LUNG_WINDOW = (-1350.0, 150.0)  # HU: level -600, width 1500


def _plt():
    import matplotlib  # deferred: 0.4 s of import, needed only when a picture is drawn (matplotlib.use first)

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


def _scale_bar(ax, pixel_mm: float, length_mm: float = 20.0) -> None:
    """A ``length_mm`` bar (white, lower left) on an image whose columns are ``pixel_mm`` wide."""
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    n = length_mm / pixel_mm
    left, bottom = min(x0, x1) + 0.05 * abs(x1 - x0), max(y0, y1) - 0.06 * abs(y1 - y0)
    ax.plot([left, left + n], [bottom, bottom], color="white", linewidth=3, solid_capstyle="butt")
    ax.text(left, bottom - 0.03 * abs(y1 - y0), f"{length_mm:g} mm", color="white", fontsize=7, va="bottom")


def _views(arr: np.ndarray, lab: np.ndarray, c: tuple[int, int, int], spacing) -> list[tuple]:
    """(title, image, outline, aspect, column pixel mm) for axial, coronal and sagittal slices through ``c``."""
    sx, sy, sz = spacing
    i, j, k = c
    return [("axial", arr[:, :, k].T, lab[:, :, k].T, sy / sx, sx),
            ("coronal", arr[:, j, :].T[::-1], lab[:, j, :].T[::-1], sz / sx, sx),
            ("sagittal", arr[i, :, :].T[::-1], lab[i, :, :].T[::-1], sz / sy, sy)]


def save_preview_png(image: sitk.Image, mask: sitk.Image, path: str | Path, max_lesions: int = 4,
                     window: tuple[float, float] = LUNG_WINDOW) -> Path:
    """``<case_id>_preview.png``: one row per lesion (largest first; the volume centre when there is none) with
    axial, coronal and sagittal slices through its centre, the mask outlined in green over the CT (lung window)
    and a 20 mm scale bar. Radiological convention (volumes reoriented to LPS first)."""

    plt = _plt()
    oriented = sitk.DICOMOrient(image, "LPS")
    arr, lab = sitk_to_xyz_array(oriented), to_lps_array(mask) > 0
    spacing = oriented.GetSpacing()
    labels, n = ndimage.label(lab, structure=np.ones((3, 3, 3)))
    centres: list[tuple[str, tuple[int, int, int]]] = []
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        for idx in np.argsort(sizes)[::-1][:max_lesions]:
            c = ndimage.center_of_mass(labels == idx + 1)
            centres.append((f"lesion {len(centres) + 1} ({sizes[idx] * float(np.prod(spacing)):.0f} mm3)",
                            tuple(int(round(v)) for v in c)))
    else:
        centres.append(("no lesion: volume centre", tuple(s // 2 for s in arr.shape)))
    fig, axes = plt.subplots(len(centres), 3, figsize=(9.6, 3.3 * len(centres)), dpi=90, squeeze=False)
    for row, (title, c) in zip(axes, centres, strict=True):
        for ax, (view, img, outline, aspect, px) in zip(row, _views(arr, lab, c, spacing), strict=True):
            ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect)
            if outline.any():
                ax.contour(outline, levels=[0.5], colors="lime", linewidths=1.0)
            ax.set_title(f"{title}: {view}", fontsize=8)
            ax.axis("off")
            _scale_bar(ax, px)
    fig.tight_layout()
    return _save(fig, path)


def save_dice_boxplot(dice: list[float], path: str | Path) -> Path:
    """``dice_box.png``: the distribution of per-case Dice (box plot with every case as a point)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.2, 3.6), dpi=90)
    ax.boxplot([dice], widths=0.5, showfliers=False)
    ax.scatter(np.ones(len(dice)) + np.random.default_rng(0).uniform(-0.08, 0.08, len(dice)), dice, s=14,
               color="tab:green", zorder=3)
    ax.set_ylim(0, 1)
    ax.set_xticks([1], [f"{len(dice)} cases"])
    ax.set_ylabel("Dice")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)
