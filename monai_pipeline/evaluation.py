"""Segmentation metrics (voxel- and lesion-wise), spacing-aware, plus the ``evaluate`` report.

Conventions (documented in ``docs/evaluation.md``):

* Dice and IoU: both masks empty -> 1.0; exactly one empty -> 0.0.
* Sensitivity = TP/(TP+FN), NaN when the reference is empty; precision = TP/(TP+FP), NaN when the prediction is
  empty; specificity = TN/(TN+FP).
* HD95 and ASSD (mm) are computed from the surface voxels of both masks (6-connected boundary) with exact
  Euclidean distances in mm (nearest surface voxel, KD-tree); HD95 = max of the two directed 95th percentiles (as MONAI), ASSD = mean of all distances
  from both directions. Undefined (NaN) when either mask is empty, and NaNs are excluded from means.
* Lesions are 26-connected components. A reference lesion is detected (TP) when predicted voxels cover at
  least ``min_overlap`` of it (default: any overlap, >= 1 voxel); a predicted component that touches no
  reference lesion is a false positive.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from monai_pipeline.postprocess.array import c_order, label_components

logger = logging.getLogger(__name__)

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
    from scipy.spatial import cKDTree

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


def summarize(values: Sequence[float]) -> dict[str, float]:
    """mean, median, std (ddof=1), 95% t-interval of the mean, and n, over the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "median": nan, "std": nan, "ci95_low": nan, "ci95_high": nan, "n": 0}
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "median": float(np.median(v)), "std": std, "ci95_low": mean - half,
            "ci95_high": mean + half, "n": n}


def evaluate_folder(pred_dir: str | Path, manifest: str | Path, out: str | Path | None = None,
                    sections: Sequence[str] = ("training", "validation", "test"), min_overlap: float = 0.0,
                    plot: bool = True, base_dir: str | Path | None = None) -> dict:
    """Evaluate every manifest case that has ``PRED_DIR/<case_id>.nii.gz``; writes ``metrics.csv`` and
    ``summary.json`` (and ``dice.png``) to ``out`` (default: ``PRED_DIR``). Returns the summary."""
    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.errors import InputError
    from monai_pipeline.io.geometry import Geometry, sitk_to_xyz_array
    from monai_pipeline.io.reader import read_ct
    from monai_pipeline.io.writer import atomic_write_text

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder does not exist")
    out = Path(out) if out else pred_dir
    entries = [e for s in sections for e in load_manifest(manifest, s, base_dir) if e.get("label")]
    rows, missing = [], []
    for e in entries:
        pf = pred_dir / f"{e['case_id']}.nii.gz"
        if not pf.exists():
            missing.append(e["case_id"])
            continue
        pv, rv = read_ct(pf), read_ct(e["label"])
        if not pv.geometry.matches(rv.geometry):
            raise InputError(pf, f"grid differs from the reference label {e['label']} "
                             f"(size {pv.geometry.size} vs {rv.geometry.size})")
        m = case_metrics(sitk_to_xyz_array(pv.image), sitk_to_xyz_array(rv.image), Geometry.from_sitk(rv.image).spacing,
                         min_overlap)
        rows.append({"case_id": e["case_id"], **m})
    if not rows:
        raise InputError(pred_dir, f"holds no prediction for any labelled case of {manifest}")
    if missing:
        logger.warning("%d manifest case(s) have no prediction in %s: %s", len(missing), pred_dir, ", ".join(missing))
    summary = {"n_cases": len(rows), "missing_predictions": missing, "min_overlap": min_overlap,
               "metrics": {k: summarize([r[k] for r in rows]) for k in METRICS}}
    n_fp = sum(r["lesion_fp"] for r in rows)
    summary["lesion_false_positives_per_scan"] = n_fp / len(rows)
    tot_tp, tot_ref = sum(r["lesion_tp"] for r in rows), sum(r["lesion_tp"] + r["lesion_fn"] for r in rows)
    summary["lesion_sensitivity_pooled"] = _ratio(tot_tp, tot_ref)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["case_id", *METRICS])
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(out / "metrics.csv", buf.getvalue())
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, allow_nan=True))
    if plot:
        _plot_dice(rows, out / "dice.png")
    return {"rows": rows, **summary}


def _plot_dice(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_pipeline.io.writer import atomic_path

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(rows) + 2), 3.2), dpi=90)
    ax.bar(range(len(rows)), [r["dice"] for r in rows], color="tab:green")
    ax.set_xticks(range(len(rows)), [r["case_id"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.axhline(float(np.mean([r["dice"] for r in rows])), color="k", ls="--", lw=1, label="mean")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def format_table(result: dict) -> str:
    """Plain-text table: one row per case, then mean and 95% CI."""
    cols = ("dice", "iou", "sensitivity", "precision", "hd95_mm", "assd_mm", "lesion_tp", "lesion_fp", "lesion_fn")
    width = max([len("case")] + [len(r["case_id"]) for r in result["rows"]])
    lines = [f"{'case':<{width}} " + " ".join(f"{c:>11}" for c in cols)]
    for r in result["rows"]:
        lines.append(f"{r['case_id']:<{width}} " + " ".join(f"{r[c]:>11.4g}" for c in cols))
    m = result["metrics"]
    lines.append(f"{'mean':<{width}} " + " ".join(f"{m[c]['mean']:>11.4g}" for c in cols))
    lines.append(f"{'95% CI':<{width}} " + " ".join(
        f"{m[c]['ci95_low']:>5.3g}-{m[c]['ci95_high']:<5.3g}" if np.isfinite(m[c]['ci95_low']) else f"{'n/a':>11}"
        for c in cols))
    return "\n".join(lines)
