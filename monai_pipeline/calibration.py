"""The lesion-score threshold a trained model ships with: its FROC operating point on the validation cases, and
:func:`train_model`, training followed by that choice (what ``train``, ``cv`` and the demo call; it sits above
both training and inference, which training never imports).

After training, the model predicts its validation cases with every candidate kept; each candidate is matched to
the reference nodules with the LUNA16 hit rule (:mod:`monai_pipeline.evaluation.detection`), and the threshold
is the lowest score at which the validation false positives per scan stay at or below
``training.operating_fp_per_scan``. It is stored in the model file as ``inference.min_lesion_score`` with the
operating point it was chosen at (``operating_point``: threshold, false positives per scan, sensitivity, cases);
``infer --min-score`` overrides it. When no threshold keeps a detected nodule (scores that do not separate), none
is set and a warning says so. The validation detections (per scan: each reference nodule's best hit score, the
false-positive scores) are stored with the point, so that cross-validation can score each fold at a threshold
chosen on the *other* folds' validation cases (:func:`cross_fitted_points`) rather than on its own.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from monai_pipeline.config import PipelineConfig
from monai_pipeline.data.manifest import split_for_fold
from monai_pipeline.evaluation.detection import ScanDetections, froc_curve, match_scan
from monai_pipeline.evaluation.evaluate import read_binary_label, reference_lesions
from monai_pipeline.inference.predictor import Predictor
from monai_pipeline.io.geometry import sitk_to_xyz_array
from monai_pipeline.io.writer import atomic_path
from monai_pipeline.model_file import read_model_file
from monai_pipeline.training import train

logger = logging.getLogger(__name__)


def validation_detections(model: Path, val_files: list[dict], device: str | torch.device,
                          inference: dict | None = None) -> list[ScanDetections]:
    """Every validation case predicted with all candidates kept, matched to its reference nodules; ``inference``
    overrides the model's inference settings (e.g. ``lesion_score``)."""
    predictor = Predictor(model, device=str(device), inference={**(inference or {}), "min_lesion_score": 0.0})
    scans = []
    for e in val_files:
        pred = predictor.predict(e["image"], e["case_id"])
        ref = read_binary_label(e["label"])
        _, nodules = reference_lesions(pred.mask, sitk_to_xyz_array(ref.image), ref.geometry)
        cands = [((r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"]), float(r["score"]))
                 for r in pred.lesions]
        scans.append(match_scan(e["case_id"], cands, nodules))
    return scans


def choose_threshold(scans: list[ScanDetections], fp_per_scan: float) -> dict:
    """The operating point: the lowest threshold whose false positives per scan are <= ``fp_per_scan``
    (``threshold`` 0.0 when even keeping every candidate stays within it; None when no threshold within it
    keeps a detected nodule)."""
    curve = froc_curve(scans)
    thr, fps, sens = (np.asarray(curve[k]) for k in ("thresholds", "fps_per_scan", "sensitivity"))
    ok = np.flatnonzero(fps <= fp_per_scan + 1e-9)
    k = int(ok[-1])  # thresholds descend: the last allowed point is the lowest threshold
    threshold = None if sens[k] == 0 else (0.0 if k == len(thr) - 1 else float(thr[k]))
    return {"threshold": threshold, "fp_per_scan": float(fps[k]), "sensitivity": float(sens[k]),
            "target_fp_per_scan": fp_per_scan, "n_scans": curve["n_scans"], "n_nodules": curve["n_nodules"]}


def operating_point(model: str | Path, val_files: list[dict], fp_per_scan: float,
                    device: str | torch.device = "cpu", inference: dict | None = None) -> dict:
    """The operating point of ``model`` (a model file or a bundle's ``models/model.pt``) on ``val_files``
    (dicts with ``image``, ``label``, ``case_id``), logged; infinities stored as None (JSON/YAML-safe), and the
    validation detections it was chosen on under ``detections``. ``inference`` overrides the model's inference
    settings (e.g. ``lesion_score``)."""
    scans = validation_detections(Path(model), val_files, device, inference)
    point = choose_threshold(scans, fp_per_scan)
    if point["threshold"] is None:
        logger.warning("operating point: no lesion-score threshold keeps a detected validation nodule at <= %g "
                       "false positives per scan; every candidate is kept", fp_per_scan)
    else:
        logger.info("operating point on %d validation scans: lesion score >= %.10g, %.2f false positives per scan, "
                    "sensitivity %.2f", point["n_scans"], point["threshold"], point["fp_per_scan"],
                    point["sensitivity"])
    return {**_json_safe(point), "detections": [asdict(s) for s in scans]}


def _json_safe(point: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in point.items()}


def stored_detections(points: list[dict | None]) -> list[ScanDetections] | None:
    """The validation detections of ``points`` (``operating_point`` dicts as model files store them), pooled;
    None when there are none or one of them stored none (older model files, calibration off)."""
    if not points or not all(_has_detections(point) for point in points):
        return None
    return [ScanDetections(**d) for point in points for d in point["detections"]]


def pooled_point(points: list[dict | None], fp_per_scan: float) -> dict | None:
    """The operating point chosen on the pooled validation detections of ``points`` (:func:`stored_detections`),
    as ``choose_threshold`` returns it (JSON-safe); None when one of them stored none."""
    scans = stored_detections(points)
    return None if scans is None else _json_safe(choose_threshold(scans, fp_per_scan))


def _has_detections(point: dict | None) -> bool:
    return bool(point) and point.get("detections") is not None


def cross_fitted_points(points: dict[int, dict | None], fp_per_scan: float) -> dict[int, dict]:
    """For each fold k of ``points`` (fold -> the ``operating_point`` its model file stores), the operating point
    chosen on the pooled validation detections of every *other* fold (each fold's model on its own held-out
    cases), as ``choose_threshold`` returns it plus ``chosen_on_folds``. A fold whose others stored no
    detections (older model files, calibration off) is left out: its own threshold stands, and it is logged."""
    out = {}
    for k in points:
        others = [j for j, point in points.items() if j != k and _has_detections(point)]
        if not others:
            logger.warning("fold %d: no other fold's validation detections; its own threshold (chosen on the "
                           "cases it is scored on) stands", k)
            continue
        out[k] = {**pooled_point([points[j] for j in others], fp_per_scan), "chosen_on_folds": others}
    return out


def calibrate_model(model: str | Path, val_files: list[dict], fp_per_scan: float,
                    device: str | torch.device = "cpu") -> dict:
    """Choose the operating point on ``val_files`` and write it into ``model`` (see the module docstring)."""
    model = Path(model)
    point = operating_point(model, val_files, fp_per_scan, device)
    blob = read_model_file(model)
    if point["threshold"] is not None:
        blob["config"]["inference"]["min_lesion_score"] = point["threshold"]
    blob["operating_point"] = point
    with atomic_path(model) as tmp:
        torch.save(blob, tmp)
    return point


def train_model(manifest: str | Path, run: str | Path, cfg: PipelineConfig, fold: int | None = None,
                epochs: int | None = None, device: str | None = None, resume: bool = False,
                progress: bool = True) -> Path:
    """:func:`~monai_pipeline.training.train`, then (on rank 0, when there are validation cases and
    ``training.operating_fp_per_scan`` > 0) the operating point written into the model file."""
    model = train(manifest, run, cfg, fold=fold, epochs=epochs, device=device, resume=resume, progress=progress)
    _, val_files = split_for_fold(manifest, fold)
    if int(os.environ.get("RANK", "0")) == 0 and val_files and cfg.training.operating_fp_per_scan > 0:
        calibrate_model(model, val_files, cfg.training.operating_fp_per_scan, device or "cpu")
    return model

