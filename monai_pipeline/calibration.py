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
false-positive scores) are stored with the point, so that cross-validation can score each held-out case at a
threshold chosen without it: on the other folds' validation cases and the rest of its own fold's
(:func:`cross_fitted_groups`; :func:`cross_fitted_points`, the other folds alone, for model files without stored
candidates).

With ``training.fp_reduction`` a second stage comes first: a classifier of the validation candidates (size,
shape, HU and network score; :mod:`monai_pipeline.postprocess.candidates`) is fitted on them, stored as
``inference.candidate_classifier``, and the threshold is chosen on its scores, each validation scan scored by a
classifier fitted without it (5 groups of scans), since in-sample scores would set the threshold too low.
Cross-validation fits each group's second stage on the other groups' candidates (stored with the point as
``candidates``), so its out-of-fold figures never see a classifier fitted on the scan it scores.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from monai_pipeline.config import PipelineConfig, config_from_model_dict
from monai_pipeline.data.manifest import split_for_fold
from monai_pipeline.evaluation.detection import ScanDetections, froc_curve, hit_nodule
from monai_pipeline.evaluation.evaluate import read_binary_label, reference_lesions, split_reference
from monai_pipeline.inference.predictor import Predictor
from monai_pipeline.io.geometry import sitk_to_xyz_array
from monai_pipeline.io.writer import atomic_path
from monai_pipeline.model_file import read_model_file, training_data_card
from monai_pipeline.postprocess.candidates import FEATURE_COLUMNS, CandidateClassifier, fit_classifier
from monai_pipeline.training import slice_spacings, train

logger = logging.getLogger(__name__)

#: groups of validation scans over which the second stage's threshold is chosen on out-of-sample scores
THRESHOLD_GROUPS = 5
#: under cv, each fold's held-out scans are dealt into this many groups, each scored at an operating point chosen
#: on all the other groups (:func:`cross_fitted_groups`)
GROUPS_PER_FOLD = 2


def validation_candidates(model: Path, val_files: list[dict], device: str | torch.device,
                          inference: dict | None = None, postprocess: dict | None = None) -> list[dict]:
    """Every validation case predicted with all candidates kept: per scan its ``case_id``, ``n_nodules`` (reference
    nodules) and ``candidates``, each the lesion-table columns the second stage reads
    (:data:`~monai_pipeline.postprocess.candidates.FEATURE_COLUMNS`), its ``centre`` (mm, LPS) and ``hit``: the
    index of the reference nodule it hits by LUNA16's rule, or -1 (a false positive); a candidate on a reference
    component below the reference standard's size (:func:`~monai_pipeline.evaluation.evaluate.split_reference`)
    is left out, as evaluation ignores it. ``inference`` overrides the model's inference settings (e.g.
    ``lesion_score``), ``postprocess`` its post-processing (e.g. ``split_necks``)."""
    predictor = Predictor(model, device=str(device), inference={**(inference or {}), "min_lesion_score": 0.0},
                          postprocess=postprocess)
    scans = []
    for e in val_files:
        pred = predictor.predict(e["image"], e["case_id"])
        ref = read_binary_label(e["label"])
        standard, _, small = split_reference(sitk_to_xyz_array(ref.image), ref.geometry)
        _, nodules = reference_lesions(pred.mask, standard, ref.geometry)
        cands = []
        for r in pred.lesions:
            centre = [r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"]]
            hit = hit_nodule(centre, nodules)
            if hit is None and hit_nodule(centre, small) is not None:
                continue
            cands.append({**{k: r[k] for k in FEATURE_COLUMNS}, "centre": centre, "hit": -1 if hit is None else hit})
        scans.append({"case_id": e["case_id"], "n_nodules": len(nodules), "candidates": cands})
    return scans


def scan_detections(scans: list[dict], classifier: dict | None = None) -> list[ScanDetections]:
    """:func:`validation_candidates`' scans as :class:`ScanDetections`, each candidate scored by ``classifier``
    (a stored :class:`~monai_pipeline.postprocess.candidates.CandidateClassifier`) or, without one, by the
    network's score."""
    clf = CandidateClassifier.from_dict(classifier) if classifier else None
    out = []
    for scan in scans:
        cands = scan["candidates"]
        scores = clf.predict(cands) if clf else [c["network_score"] for c in cands]
        det = ScanDetections(scan["case_id"], [None] * scan["n_nodules"])
        for c, score in zip(cands, scores, strict=True):
            det.record(None if c["hit"] < 0 else c["hit"], score)
        out.append(det)
    return out


def fit_second_stage(scans: list[dict], log: bool = True) -> dict | None:
    """The second-stage classifier fitted on every candidate of ``scans`` (hit or false positive), as stored;
    None when they hold no hit or no false positive (logged unless ``log`` is False)."""
    cands = [c for scan in scans for c in scan["candidates"]]
    clf = fit_classifier(cands, [c["hit"] >= 0 for c in cands])
    if clf is None:
        if log:
            logger.warning("second stage not fitted: %d validation candidates, none %s", len(cands),
                           "hits a nodule" if any(c["hit"] < 0 for c in cands) else "is a false positive")
        return None
    if log:
        logger.info("second stage fitted on %d candidates (%d hits)", len(cands), clf.n_positive)
    return clf.to_dict()


def out_of_sample_detections(scans: list[dict], classifier: dict, groups: int = THRESHOLD_GROUPS
                             ) -> list[ScanDetections]:
    """``scans`` as :class:`ScanDetections`, each scored by a second stage fitted *without* it: the scans are dealt
    into ``groups`` and each group is scored by a classifier fitted on the others (``classifier``, fitted on all,
    where the others hold no hit or no false positive). A threshold chosen on in-sample scores would find the
    false positives the classifier was fitted to reject easier to reject than new ones."""
    n = min(groups, len(scans))
    out = []
    for g in range(n):
        rest = [scan for i, scan in enumerate(scans) if i % n != g]
        out += scan_detections(scans[g::n], fit_second_stage(rest, log=False) or classifier)
    return out


def second_stage_point(scans: list[dict], fp_per_scan: float) -> tuple[dict | None, list[ScanDetections]]:
    """The second stage fitted on every candidate of ``scans``, and the detections its threshold is chosen on:
    out-of-sample scores (:func:`out_of_sample_detections`); the network's scores when none could be fitted."""
    classifier = fit_second_stage(scans)
    if classifier is None:
        return None, scan_detections(scans)
    return classifier, out_of_sample_detections(scans, classifier)


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
                    device: str | torch.device = "cpu", inference: dict | None = None,
                    fp_reduction: bool = False, postprocess: dict | None = None) -> dict:
    """The operating point of ``model`` (a model file or a bundle's ``models/model.pt``) on ``val_files``
    (dicts with ``image``, ``label``, ``case_id``), logged; infinities stored as None (JSON/YAML-safe). With
    ``fp_reduction`` the second-stage classifier is fitted on the same candidates first and the threshold applies
    to its scores, chosen on out-of-sample ones (:func:`second_stage_point`; ``classifier``, None without). The
    validation candidates and detections it was chosen on are kept (``candidates``, ``detections``).
    ``inference`` and ``postprocess`` override the model's settings of those sections."""
    candidates = validation_candidates(Path(model), val_files, device, inference, postprocess)
    classifier, scans = scored_detections(candidates, fp_per_scan, fp_reduction)
    point = choose_threshold(scans, fp_per_scan)
    if point["threshold"] is None:
        logger.warning("operating point: no lesion-score threshold keeps a detected validation nodule at <= %g "
                       "false positives per scan; every candidate is kept", fp_per_scan)
    else:
        logger.info("operating point on %d validation scans: lesion score >= %.10g, %.2f false positives per scan, "
                    "sensitivity %.2f", point["n_scans"], point["threshold"], point["fp_per_scan"],
                    point["sensitivity"])
    return {**_json_safe(point), "classifier": classifier, "detections": [asdict(s) for s in scans],
            "candidates": candidates}


def _json_safe(point: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in point.items()}


def stored_detections(points: list[dict | None]) -> list[ScanDetections] | None:
    """The validation detections of ``points`` (``operating_point`` dicts as model files store them), pooled and
    scored by the network: from their stored candidates, or from older model files' stored detections; None when
    there are none or one of them stored neither (calibration off)."""
    candidates = _pooled_candidates(points)
    if candidates is not None:
        return scan_detections(candidates)
    if not points or not all(_has(point, "detections") for point in points):
        return None
    return [ScanDetections(**d) for point in points for d in point["detections"]]


def pooled_point(points: list[dict | None], fp_per_scan: float, fp_reduction: bool = False) -> dict | None:
    """The operating point chosen on the pooled validation results of ``points``, as ``choose_threshold``
    returns it (JSON-safe) plus ``classifier``. With ``fp_reduction`` and every point's candidates stored, the
    second stage is fitted on the pooled candidates and the threshold chosen on its out-of-sample scores
    (:func:`second_stage_point`); otherwise on the network's scores (:func:`stored_detections`), ``classifier``
    None. None when one of them stored nothing."""
    candidates = _pooled_candidates(points)
    if candidates is not None:
        return candidates_point(candidates, fp_per_scan, fp_reduction)
    scans = stored_detections(points)  # older model files: detections only, the network's scores
    return None if scans is None else {**_json_safe(choose_threshold(scans, fp_per_scan)), "classifier": None}


def scored_detections(scans: list[dict], fp_per_scan: float, fp_reduction: bool = False
                      ) -> tuple[dict | None, list[ScanDetections]]:
    """The detections a threshold is chosen on, from validation candidates (:func:`validation_candidates`' scans):
    with ``fp_reduction`` the second stage and its out-of-sample scores (:func:`second_stage_point`), else no
    classifier and the network's scores."""
    return second_stage_point(scans, fp_per_scan) if fp_reduction else (None, scan_detections(scans))


def candidates_point(scans: list[dict], fp_per_scan: float, fp_reduction: bool = False) -> dict:
    """The operating point chosen on validation candidates (:func:`scored_detections`), as :func:`pooled_point`
    returns it."""
    classifier, dets = scored_detections(scans, fp_per_scan, fp_reduction)
    return {**_json_safe(choose_threshold(dets, fp_per_scan)), "classifier": classifier}


def _pooled_candidates(points: list[dict | None]) -> list[dict] | None:
    """Every point's stored validation candidates (scans), pooled; None unless every point stored them."""
    if not points or not all(_has(point, "candidates") for point in points):
        return None
    return [scan for point in points for scan in point["candidates"]]


def _has(point: dict | None, key: str) -> bool:
    return bool(point) and point.get(key) is not None


def cross_fitted_points(points: dict[int, dict | None], fp_per_scan: float,
                        fp_reduction: bool = False) -> dict[int, dict]:
    """For each fold k of ``points`` (fold -> the ``operating_point`` its model file stores), the operating point
    (and, with ``fp_reduction``, the second-stage classifier) chosen on the pooled validation results of every
    *other* fold (each fold's model on its own held-out cases), as :func:`pooled_point` returns it plus
    ``chosen_on_folds``. A fold whose others stored no detections (older model files, calibration off) is left
    out: its own threshold stands, and it is logged."""
    out = {}
    for k in points:
        others = [j for j, point in points.items() if j != k and _has(point, "detections")]
        if not others:
            logger.warning("fold %d: no other fold's validation detections; its own threshold (chosen on the "
                           "cases it is scored on) stands", k)
            continue
        out[k] = {**pooled_point([points[j] for j in others], fp_per_scan, fp_reduction), "chosen_on_folds": others}
    return out


def cross_fitted_groups(points: dict[int, dict | None], fp_per_scan: float, fp_reduction: bool = False,
                        groups: int = GROUPS_PER_FOLD) -> dict[int, list[dict]] | None:
    """For each fold k of ``points`` (fold -> the ``operating_point`` its model file stores), one operating point
    per group of its held-out scans (the stored candidates' scans, dealt ``scans[g::groups]``), each chosen
    (:func:`candidates_point`) on the candidates of every *other* group of every fold: the other folds' models on
    their held-out cases and fold k's own model on the rest of its own. Each point carries ``cases`` (its group's
    case ids) and ``chosen_on_scans``. None unless every fold stored candidates (then :func:`cross_fitted_points`).

    Why not the other folds alone: fold models can differ widely. The 480-epoch LIDC-shaped fold models made 5.1
    and 29.4 candidates per held-out scan; a threshold for 1 false positive per scan chosen on one fold's landed at
    17.5 on the other's. With fold k's own model's other scans in the pool, every fold landed at 0.95-1.30
    (docs/recipe.md, "Choosing the operating point under cv")."""
    if len(points) < 2 or not all(_has(point, "candidates") for point in points.values()):
        return None
    out: dict[int, list[dict]] = {}
    for k, point in points.items():
        out[k] = []
        for g in range(min(groups, len(point["candidates"]))):
            rest = [scan for j, other in points.items() for i, scan in enumerate(other["candidates"])
                    if j != k or i % groups != g]  # every other group, in the stored order
            out[k].append({**candidates_point(rest, fp_per_scan, fp_reduction),
                           "cases": [scan["case_id"] for scan in point["candidates"][g::groups]],
                           "chosen_on_scans": len(rest)})
    return out


def calibrate_model(model: str | Path, val_files: list[dict], fp_per_scan: float,
                    device: str | torch.device = "cpu", fp_reduction: bool = False,
                    inference: dict | None = None, postprocess: dict | None = None,
                    training_data: dict | None = None) -> dict:
    """Choose the operating point (with ``fp_reduction``, after fitting the second stage) on ``val_files`` and
    write it into ``model`` (see the module docstring); ``inference`` overrides the model's inference settings
    for the choice and is stored with it (e.g. ``{"foreground_threshold": 0.3}``); ``postprocess``, a whole
    ``postprocess`` section, replaces the model's for the choice and in the file; ``training_data`` replaces the
    file's description of its training data (:func:`~monai_pipeline.model_file.training_data_card`)."""
    model = Path(model)
    point = operating_point(model, val_files, fp_per_scan, device, inference=inference, fp_reduction=fp_reduction,
                            postprocess=postprocess)
    blob = read_model_file(model)
    blob["config"]["inference"].update(inference or {})
    if postprocess is not None:
        blob["config"]["postprocess"] = postprocess
    if training_data is not None:
        blob["training_data"] = training_data
    blob["config"]["inference"]["candidate_classifier"] = point["classifier"]
    if point["threshold"] is not None:
        blob["config"]["inference"]["min_lesion_score"] = point["threshold"]
    blob["operating_point"] = point
    with atomic_path(model) as tmp:
        torch.save(blob, tmp)
    return point


#: the inference settings that decide what a candidate is and how it scores: a recalibration takes them from the
#: configuration (the sliding window's size, precision and the like stay the model's)
DECISION_KEYS = ("foreground_threshold", "lesion_score", "tta", "tta_axes", "tta_scope")


def recalibration_inference(cfg: PipelineConfig) -> dict:
    """The inference settings a recalibration with ``cfg`` gives a model (``cv --recalibrate``): ``cfg``'s
    :data:`DECISION_KEYS`, so that the point is chosen, and the model then predicts, with them (e.g. another
    ``foreground_threshold``)."""
    inference = cfg.to_dict()["inference"]
    return {k: inference[k] for k in DECISION_KEYS}


def recalibration_postprocess(cfg: PipelineConfig) -> dict:
    """The post-processing a recalibration with ``cfg`` gives a model: ``cfg``'s whole ``postprocess`` section,
    since its steps (``split_necks``, ``remove_small``, the lung filter) decide what a candidate is."""
    return cfg.to_dict()["postprocess"]


def recalibrate(model: str | Path, manifest: str | Path, fold: int | None = None, fp_per_scan: float | None = None,
                fp_reduction: bool | None = None, device: str | None = None,
                inference: dict | None = None, postprocess: dict | None = None) -> dict:
    """Choose a trained model's operating point again, as training chose it: on the validation cases of
    ``manifest`` (fold ``fold``'s cases, else its ``validation`` section, as ``train --fold`` splits it), at
    ``fp_per_scan`` false positives per scan (default: the model's ``training.operating_fp_per_scan``), after
    fitting the second stage when ``fp_reduction`` (default: the model's ``training.fp_reduction``), with the
    model's inference settings overridden by ``inference`` and its post-processing replaced by ``postprocess``
    (both stored with the point). For a model trained before a change to inference or evaluation, whose stored
    point was chosen with the old one; a model file made before slice spacings were recorded gets them too
    (:func:`completed_training_data`). Written into ``model`` (atomically); returns the point."""
    blob = read_model_file(model)
    training = config_from_model_dict(blob["config"]).training
    train_files, val_files = split_for_fold(manifest, fold)
    return calibrate_model(model, val_files, training.operating_fp_per_scan if fp_per_scan is None else fp_per_scan,
                           device or ("cuda" if torch.cuda.is_available() else "cpu"),
                           training.fp_reduction if fp_reduction is None else fp_reduction, inference, postprocess,
                           completed_training_data(blob, train_files))


def completed_training_data(blob: dict, train_files: list[dict]) -> dict | None:
    """The training-data description a model file made before slice spacings were recorded should have:
    recomputed from ``train_files`` (the manifest's training cases for the model's fold) when they are exactly
    the cases the file says it was trained on (``trained_on``), so that ``infer`` can warn about scans unlike
    them; None when the file records the spacings already, or the cases differ (nothing is guessed)."""
    if "slice_spacing_mm" in (blob.get("training_data") or {}):
        return None
    if sorted(f["case_id"] for f in train_files) != sorted(blob.get("trained_on") or []) or not train_files:
        return None
    spacings = slice_spacings(train_files)
    return training_data_card(train_files, spacings) if spacings else None


def train_model(manifest: str | Path, run: str | Path, cfg: PipelineConfig, fold: int | None = None,
                epochs: int | None = None, device: str | None = None, resume: bool = False,
                progress: bool = True) -> Path:
    """:func:`~monai_pipeline.training.train`, then (on rank 0, when there are validation cases and
    ``training.operating_fp_per_scan`` > 0) the operating point written into the model file."""
    model = train(manifest, run, cfg, fold=fold, epochs=epochs, device=device, resume=resume, progress=progress)
    _, val_files = split_for_fold(manifest, fold)
    if int(os.environ.get("RANK", "0")) == 0 and val_files and cfg.training.operating_fp_per_scan > 0:
        calibrate_model(model, val_files, cfg.training.operating_fp_per_scan, device or "cpu",
                        cfg.training.fp_reduction)
    return model

