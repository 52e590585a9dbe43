"""``monai-pipeline cv``: k-fold cross-validation with out-of-fold evaluation, and the fold ensemble.

For each fold k (patient-level folds of the manifest's training cases): train ``CV/fold_k`` on the other folds
(resumed when a previous run was interrupted), then predict fold k's cases with that fold's model into
``CV/predictions`` (resumable, provenance per fold model). The summary is computed over the pooled out-of-fold
predictions only (nnU-Net's cross-validation summary): ``CV/summary.json``, ``CV/metrics.csv`` and the rest of
the evaluation report. ``CV/cv.json`` lists the fold models, so ``monai-pipeline infer --model CV`` applies
the ensemble (the folds' probabilities averaged) to new data, at the threshold chosen on every fold's
held-out detections pooled (``ensemble_operating_point``, with its second-stage classifier when
``training.fp_reduction`` is on).

Every fold is trained before any is predicted, because each held-out case is scored at a lesion-score threshold
chosen without it: each fold's cases are dealt into two groups, and each group is scored at the operating point
chosen on every other group's held-out candidates, the other folds' and the other half of its own fold's
(:func:`~monai_pipeline.calibration.cross_fitted_groups`; the points, the cases each scored and how many scans
they were chosen on are in ``CV/cv.json``'s ``operating_points``). A threshold chosen at ``training.
operating_fp_per_scan`` on the very cases it is then scored on would meet its false-positive rate by
construction. With ``training.fp_reduction``, each group's second-stage classifier is likewise fitted on the other
groups' candidates. Each fold's best checkpoint is still chosen on that fold's own cases (its
validation set), as nnU-Net validates on its fold; the out-of-fold figures share that milder optimism.

``cv --seeds N`` repeats all of this per training seed (``CV/seed_<s>/``); with ``--ensemble`` the seeds' models
are then averaged fold by fold and that ensemble is cross-validated the same way in ``CV/ensemble/``
(:func:`ensemble_seeds`): nnU-Net's habit of ensembling what it trained, measured out of fold.

``cv --recalibrate`` trains nothing: each fold model's operating point is chosen again on its own fold's cases
(as ``calibrate --fold k``, at the configuration's ``training.operating_fp_per_scan`` and ``fp_reduction``), the
old predictions are removed, and the held-out cases are predicted and evaluated afresh as above. It brings a
cross-validation trained by an earlier version up to this version's inference and evaluation, or moves it to
another false-positive rate.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from monai_pipeline.calibration import (
    cross_fitted_groups,
    cross_fitted_points,
    operating_point,
    pooled_point,
    recalibration_inference,
    recalibration_postprocess,
    train_model,
)
from monai_pipeline.calibration import recalibrate as recalibrate_model
from monai_pipeline.config import PipelineConfig
from monai_pipeline.data.manifest import load_manifest, split_for_fold
from monai_pipeline.errors import InputError
from monai_pipeline.evaluation import evaluate_folder
from monai_pipeline.inference import Case, Predictor, run_batch
from monai_pipeline.inference.batch import write_batch_lesions
from monai_pipeline.inference.predictor import CV_FILE, file_sha256
from monai_pipeline.io.layout import PredictionLayout
from monai_pipeline.io.writer import atomic_write_text
from monai_pipeline.model_file import read_model_file
from monai_pipeline.seeds import headline_figures, seed_folder, write_seeds
from monai_pipeline.training import latest_checkpoint

logger = logging.getLogger(__name__)


def manifest_folds(manifest: str | Path) -> list[int]:
    """The folds of the manifest's training cases."""

    training = load_manifest(manifest, "training")
    if not training:
        raise InputError(manifest, "has no training cases to cross-validate")
    return sorted({int(e.get("fold", 0)) for e in training})


def cross_validate(manifest: str | Path, out: str | Path, cfg: PipelineConfig, folds: list[int] | None = None,
                   epochs: int | None = None, device: str | None = None, progress: bool = True,
                   recalibrate: bool = False) -> dict:
    """Train, predict and evaluate every fold (see the module docstring); returns the out-of-fold summary. With
    ``recalibrate`` nothing is trained: :func:`recalibrate_folds` first, then the held-out cases are predicted and
    evaluated afresh."""

    out = Path(out)
    available = manifest_folds(manifest)
    folds = sorted(folds) if folds is not None else available
    bad = [f for f in folds if f not in available]
    if bad:
        raise InputError(manifest, f"fold must be one of {available}, got {bad[0]}")
    if len(available) < 2:
        raise InputError(manifest, "needs at least 2 folds to cross-validate")
    if recalibrate:
        recalibrate_folds(manifest, out, cfg, folds, device)
    models: dict[str, str] = {}
    for k in folds:
        run = out / f"fold_{k}"
        if not (run / "model.pt").is_file():
            resume = latest_checkpoint(run) is not None
            logger.info("fold %d: %s training", k, "resuming" if resume else "starting")
            train_model(manifest, run, cfg, fold=k, epochs=epochs, device=device, resume=resume, progress=progress)
        models[str(k)] = f"fold_{k}/model.pt"
    stored = {k: read_model_file(out / f"fold_{k}" / "model.pt").get("operating_point") for k in folds}
    return evaluate_out_of_fold(manifest, out, cfg, models, stored, device, progress)


def evaluate_out_of_fold(manifest: str | Path, out: Path, cfg: PipelineConfig, models: dict[str, str],
                         stored: dict[int, dict | None], device: str | None = None, progress: bool = True) -> dict:
    """Predict each fold's held-out cases with its model (``models``: fold -> a model file or ensemble folder,
    relative to ``out``), each group of them at its cross-fitted operating point (``stored``: fold -> the point
    chosen on its own cases, with their candidates), into ``out/predictions``; write ``out/cv.json`` and evaluate
    the pooled predictions into ``out`` (see the module docstring). Returns the out-of-fold summary."""
    folds = sorted(stored)
    training = load_manifest(manifest, "training")
    fp = cfg.training.operating_fp_per_scan
    fold_cases = {k: [e["case_id"] for e in training if int(e.get("fold", 0)) == k] for k in folds}
    points = fold_points(stored, fp, cfg.training.fp_reduction, fold_cases)
    for k in folds:
        cases = [Case(e["case_id"], e["image"]) for e in training if int(e.get("fold", 0)) == k]
        for part in points.get(k) or [None]:
            inference = None if part is None else {"min_lesion_score": part["threshold"] or 0.0,
                                                   "candidate_classifier": part["classifier"]}
            mine = [c for c in cases if part is None or c.case_id in part["cases"]]
            summary = run_batch(Predictor(out / models[str(k)], device=device, inference=inference), mine,
                                out / "predictions", progress=progress)
            if summary.failed:
                raise InputError(out / "predictions", f"fold {k}: {summary.failed} case(s) failed (see failures.csv)")
    # each call above wrote the batch's lesion table for its own cases: one table for every out-of-fold case
    write_batch_lesions(out / "predictions", [c for k in folds for c in fold_cases[k]],
                        PredictionLayout(out / "predictions").batch_file("lesions"))
    index = {"format": "monai-pipeline-cv/2", "folds": models, "manifest": str(Path(manifest).resolve()),
             "operating_points": {str(k): p for k, p in points.items()}}
    if fp > 0:
        index["ensemble_operating_point"] = pooled_point(list(stored.values()), fp, cfg.training.fp_reduction)
    atomic_write_text(out / CV_FILE, json.dumps(index, indent=1))
    return evaluate_folder(out / "predictions", manifest, out, fold=folds)


def recalibrate_folds(manifest: str | Path, out: Path, cfg: PipelineConfig, folds: list[int],
                      device: str | None = None) -> None:
    """Choose every fold model's operating point again on its own fold's cases, as training chose it
    (:func:`~monai_pipeline.calibration.recalibrate`, at ``cfg``'s ``training.operating_fp_per_scan`` and
    ``training.fp_reduction``, with its decision settings and post-processing stored into each model:
    :func:`~monai_pipeline.calibration.recalibration_inference` and ``recalibration_postprocess``), and remove
    ``out/predictions``, which the models made as they were. For fold models trained before a change to inference
    or evaluation, or to move a cross-validation to another false-positive rate, decision threshold, TTA or
    post-processing, without training again. Every fold model must exist (checked before any work)."""
    require_fold_models(out, folds)
    for k in folds:
        point = recalibrate_model(out / f"fold_{k}" / "model.pt", manifest, k, cfg.training.operating_fp_per_scan,
                                  cfg.training.fp_reduction, device, recalibration_inference(cfg),
                                  recalibration_postprocess(cfg))
        logger.info("fold %d recalibrated: lesion score >= %s (%.2f false positives per scan on its %d cases)", k,
                    point["threshold"], point["fp_per_scan"], point["n_scans"])
    if (out / "predictions").exists():
        logger.warning("removing %s: the fold models that made it were recalibrated", out / "predictions")
        shutil.rmtree(out / "predictions")


def require_fold_models(out: Path, folds: list[int]) -> None:
    """Refuse (InputError) when a fold model of ``out`` is missing: there is nothing to recalibrate."""
    missing = [out / f"fold_{k}" / "model.pt" for k in folds if not (out / f"fold_{k}" / "model.pt").is_file()]
    if missing:
        raise InputError(missing[0], "does not exist: there is no trained fold model to recalibrate",
                         hint="run cv without --recalibrate to train it")


def fold_points(stored: dict[int, dict | None], fp_per_scan: float, fp_reduction: bool,
                fold_cases: dict[int, list[str]]) -> dict[int, list[dict]]:
    """Each fold's cross-fitted operating points (``stored``: fold -> its model file's ``operating_point``;
    ``fold_cases``: fold -> its held-out case ids): one per group of its cases, chosen on every other group's
    validation candidates (:func:`~monai_pipeline.calibration.cross_fitted_groups`), each with the ``cases`` it
    scores; for model files without stored candidates, or whose stored cases are not their fold's, one per fold
    chosen on the other folds (:func:`~monai_pipeline.calibration.cross_fitted_points`). Logged; empty when
    calibration is off (``fp_per_scan`` 0)."""
    if fp_per_scan <= 0:
        return {}
    groups = cross_fitted_groups(stored, fp_per_scan, fp_reduction)
    if groups is not None and any(sorted(c for p in groups[k] for c in p["cases"]) != sorted(fold_cases[k])
                                  for k in groups):
        logger.warning("the fold models' stored validation cases are not their folds' cases: each fold is scored "
                       "at an operating point chosen on the other folds alone")
        groups = None
    if groups is None:
        groups = {k: [{**p, "cases": fold_cases[k]}] for k, p in
                  cross_fitted_points(stored, fp_per_scan, fp_reduction).items()}
    for k, parts in groups.items():
        for p in parts:
            logger.info("fold %d, %d case(s): scored at lesion score >= %s (%.2f false positives per scan, "
                        "sensitivity %.2f where it was chosen)", k, len(p["cases"]), p["threshold"], p["fp_per_scan"],
                        p["sensitivity"])
    return groups


def cross_validate_seeds(manifest: str | Path, out: str | Path, cfg: PipelineConfig, seeds: int,
                         folds: list[int] | None = None, epochs: int | None = None, device: str | None = None,
                         progress: bool = True, recalibrate: bool = False, ensemble: bool = False) -> dict:
    """:func:`cross_validate` once per training seed 0..``seeds``-1, each in ``OUT/seed_<s>/`` (resumable), and
    the out-of-fold figures' mean and standard deviation in ``OUT/seeds.json`` (:mod:`monai_pipeline.seeds`); with
    ``ensemble``, also the seeds' ensemble evaluated out of fold (:func:`ensemble_seeds`; its figures under
    ``ensemble`` in ``seeds.json``)."""
    folds = folds or manifest_folds(manifest)
    if recalibrate:  # every seed's models, before any is recalibrated
        for s in range(seeds):
            require_fold_models(seed_folder(Path(out), s), folds)
    per_seed = {}
    for s in range(seeds):
        logger.info("cross-validation with training seed %d of 0..%d", s, seeds - 1)
        res = cross_validate(manifest, seed_folder(Path(out), s), cfg.merged({"training": {"seed": s}}), folds,
                             epochs, device, progress, recalibrate)
        per_seed[s] = headline_figures(res)
    together = None
    if ensemble:
        together = headline_figures(ensemble_seeds(manifest, out, cfg, list(range(seeds)), folds, device, progress))
    return write_seeds(Path(out), per_seed, together)


#: where ``cv --seeds N --ensemble`` puts the seeds' ensemble, inside the cross-validation folder
ENSEMBLE_FOLDER = "ensemble"


def ensemble_seeds(manifest: str | Path, out: str | Path, cfg: PipelineConfig, seeds: list[int], folds: list[int],
                   device: str | None = None, progress: bool = True, dest: str | Path | None = None) -> dict:
    """The cross-validations of ``seeds`` (``OUT/seed_<s>/``) as one ensemble, evaluated out of fold in ``dest``
    (default ``OUT/ensemble/``); returns its out-of-fold summary.

    Fold k's model is the average of every seed's fold-k model (``dest/fold_k/cv.json`` lists them), so it never
    saw fold k's cases. Its operating point is chosen on fold k's cases as training chooses a model's
    (:func:`~monai_pipeline.calibration.operating_point`, at ``cfg``'s ``training.operating_fp_per_scan`` and
    ``fp_reduction``) and kept in that index with the members' SHA-256; it is chosen again when a member or those
    settings change. The held-out cases are then scored as :func:`cross_validate` scores a fold's: each group at
    a point chosen without it. ``dest`` is then an ensemble model of every seed's every fold for new data
    (``infer --model OUT/ensemble``), at the point chosen on every fold's candidates pooled."""
    out = Path(out)
    dest = Path(dest) if dest is not None else out / ENSEMBLE_FOLDER
    chosen_with = {"operating_fp_per_scan": cfg.training.operating_fp_per_scan,
                   "fp_reduction": cfg.training.fp_reduction}
    stored, changed = {}, False
    for k in folds:
        fold_dir = dest / f"fold_{k}"
        members = [seed_folder(out, s) / f"fold_{k}" / "model.pt" for s in seeds]
        missing = [m for m in members if not m.is_file()]
        if missing:
            raise InputError(missing[0], "does not exist: the seed's fold model is needed for the ensemble")
        entry = {"format": "monai-pipeline-ensemble/1", "members": [os.path.relpath(m, fold_dir) for m in members],
                 "member_sha256": [file_sha256(m) for m in members], "chosen_with": chosen_with}
        index = fold_dir / CV_FILE
        old = json.loads(index.read_text()) if index.is_file() else {}
        if {k2: old.get(k2) for k2 in entry} == entry and "ensemble_operating_point" in old:
            stored[k] = old["ensemble_operating_point"]
            continue
        changed = True
        fold_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(index, json.dumps(entry, indent=1))  # the members, before their point is chosen
        stored[k] = ensemble_fold_point(fold_dir, manifest, k, cfg, device)
        atomic_write_text(index, json.dumps({**entry, "ensemble_operating_point": stored[k]}, indent=1))
    if changed and (dest / "predictions").exists():
        logger.warning("removing %s: the ensemble that made it has changed", dest / "predictions")
        shutil.rmtree(dest / "predictions")
    return evaluate_out_of_fold(manifest, dest, cfg, {str(k): f"fold_{k}" for k in folds}, stored, device, progress)


def ensemble_fold_point(fold_dir: Path, manifest: str | Path, fold: int, cfg: PipelineConfig,
                        device: str | None = None) -> dict | None:
    """The operating point of the ensemble in ``fold_dir`` on fold ``fold``'s cases, with their candidates
    (None when calibration is off)."""
    if cfg.training.operating_fp_per_scan <= 0:
        return None
    _, val_files = split_for_fold(manifest, fold)
    logger.info("fold %d: choosing the seed ensemble's operating point on its %d held-out cases", fold,
                len(val_files))
    return operating_point(fold_dir, val_files, cfg.training.operating_fp_per_scan,
                           device or ("cuda" if torch.cuda.is_available() else "cpu"),
                           fp_reduction=cfg.training.fp_reduction)
