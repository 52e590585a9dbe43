"""Segmentation metrics per case (voxel- and lesion-wise), spacing-aware.

Conventions (documented in ``docs/evaluation.md``):

* Dice and IoU: both masks empty -> 1.0; exactly one empty -> 0.0.
* Sensitivity = TP/(TP+FN), NaN when the reference is empty; precision = TP/(TP+FP), NaN when the prediction is
  empty; specificity = TN/(TN+FP).
* HD95 and ASSD (mm) are computed from the surface voxels of both masks (6-connected boundary) with exact
  Euclidean distances in mm (nearest surface voxel, KD-tree); HD95 = max of the two directed 95th percentiles
  (as MONAI), ASSD = mean of all distances
  from both directions. Undefined (NaN) when either mask is empty, and NaNs are excluded from means.
* Lesions are 26-connected components. A reference lesion is detected (TP) when predicted voxels cover at
  least ``min_overlap`` of it (default: any overlap, >= 1 voxel); a predicted component that touches no
  reference lesion is a false positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from monai_pipeline.arrays import c_order, label_components

METRICS = ("dice", "iou", "sensitivity", "specificity", "precision", "hd95_mm", "assd_mm", "lesion_tp",
           "lesion_fp", "lesion_fn", "lesion_sensitivity", "ref_volume_mm3", "pred_volume_mm3")


def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) voxel counts of two boolean masks."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    return tp, fp, fn, int(p.size) - tp - fp - fn


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def overlap_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    tp, fp, fn, tn = confusion(pred, ref)
    if tp + fp + fn == 0:
        dice = iou = 1.0
    else:
        dice, iou = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
    return {"dice": dice, "iou": iou, "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "precision": _ratio(tp, tp + fp)}


def surface_points_mm(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Positions (mm, array axes) of the surface voxels: mask voxels with a 6-neighbour outside the mask.

    Works on the mask's voxel list, so cost follows the objects, not the volume."""
    m = np.asarray(mask, dtype=bool)
    idx = np.argwhere(m)
    if len(idx) == 0:
        return np.zeros((0, 3))
    padded = np.pad(m, 1)
    p = idx + 1
    inner = np.ones(len(idx), bool)
    for ax in range(3):
        for step in (-1, 1):
            q = p.copy()
            q[:, ax] += step
            inner &= padded[q[:, 0], q[:, 1], q[:, 2]]
    return idx[~inner] * np.asarray(spacing, dtype=np.float64)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to the nearest surface voxel of ``ref``, and the
    reverse: exact Euclidean nearest neighbours (KD-tree) over the surface voxels' positions in mm."""

    sp, sr = surface_points_mm(pred, spacing), surface_points_mm(ref, spacing)
    return cKDTree(sr).query(sp, k=1)[0], cKDTree(sp).query(sr, k=1)[0]


def distance_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    if not np.any(pred) or not np.any(ref):
        return {"hd95_mm": float("nan"), "assd_mm": float("nan")}
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    hd95 = max(float(np.percentile(d_pr, 95)), float(np.percentile(d_rp, 95)))
    assd = float(np.concatenate([d_pr, d_rp]).mean())
    return {"hd95_mm": hd95, "assd_mm": assd}


def lesion_metrics(pred: np.ndarray, ref: np.ndarray, min_overlap: float = 0.0) -> dict[str, float]:
    """Lesion-wise TP/FP/FN by the overlap rule in the module docstring (works on voxel lists)."""
    (p, r), _, _ = c_order(np.asarray(pred) > 0, np.asarray(ref) > 0)
    lp, n_p = label_components(p, 26)
    lr, n_r = label_components(r, 26)
    lp_flat, lr_flat = lp.reshape(-1), lr.reshape(-1)
    p_idx = np.flatnonzero(p)
    tp = 0
    if n_r:
        ref_sizes = np.bincount(lr_flat[np.flatnonzero(r)], minlength=n_r + 1)
        covered = np.bincount(lr_flat[p_idx], minlength=n_r + 1)
        frac = covered[1:] / np.maximum(ref_sizes[1:], 1)
        tp = int(np.count_nonzero((covered[1:] > 0) & (frac >= min_overlap)))
    fp = 0
    if n_p:
        both = p_idx[lr_flat[p_idx] > 0]
        touching = np.unique(lp_flat[both])
        fp = n_p - len(touching)
    return {"lesion_tp": tp, "lesion_fp": fp, "lesion_fn": n_r - tp, "lesion_sensitivity": _ratio(tp, n_r)}


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], min_overlap: float = 0.0) -> dict:
    """All metrics for one case; arrays (x, y, z) on the same grid, ``spacing`` in mm."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} must equal reference shape {ref.shape}")
    (p, r), spacing, _ = c_order(np.asarray(pred) > 0, np.asarray(ref) > 0, spacing=spacing)
    vox = float(np.prod(spacing))
    return {**overlap_metrics(p, r), **distance_metrics(p, r, spacing), **lesion_metrics(p, r, min_overlap),
            "ref_volume_mm3": float(np.count_nonzero(r)) * vox, "pred_volume_mm3": float(np.count_nonzero(p)) * vox}
