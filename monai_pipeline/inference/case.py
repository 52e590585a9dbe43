"""The per-case step: predict one input, write its outputs, and (in a batch) turn a failure into an outcome.

:func:`predict_and_write` raises on a bad case (a single input is all-or-nothing); :func:`predict_case` is what
a batch does per case, in its own process and in its helper processes (:mod:`~monai_pipeline.inference.workers`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import SimpleITK as sitk
import torch

from monai_pipeline.errors import PipelineError
from monai_pipeline.inference.export import Prediction, write_prediction
from monai_pipeline.inference.predictor import Predictor
from monai_pipeline.io.geometry import xyz_array_to_sitk
from monai_pipeline.io.layout import PredictionLayout
from monai_pipeline.visualize import save_overlays_png, save_preview_png

logger = logging.getLogger(__name__)

#: errors that fail one case and let the batch go on (anything else is a bug and stops the run)
CASE_ERRORS: tuple[type[BaseException], ...] = (PipelineError, RuntimeError, MemoryError, OSError, ValueError)


class Case(NamedTuple):
    """One input of a batch: the case id its outputs are named by, the file or DICOM folder to read, and (for a
    folder holding several series, as ``--recursive`` finds them) the SeriesInstanceUID to read from it."""

    case_id: str
    path: str
    series_uid: str | None = None


@dataclass(frozen=True)
class CaseOptions:
    """What every case of one batch shares: the output folder and what to write there."""

    out: Path
    provenance: dict[str, Any]
    save_prob: bool = False
    postprocess: bool = True
    fmt: str = "nifti"
    preview: bool = False
    overlays: dict[str, str] | None = None


@dataclass
class CaseOutcome:
    """One case's result: ``seconds`` (``total_s`` and the predictor's stages) when done, ``reason`` when failed."""

    case_id: str
    path: str
    seconds: dict[str, float] | None = None
    reason: str | None = None


def predict_and_write(predictor: Predictor, case: Case, opts: CaseOptions,
                      load: Callable[[], dict] | None = None) -> tuple[Prediction, list[Path]]:
    """Predict one case and write its outputs into ``opts.out`` (mask in each format, tables, done-marker, and
    the preview/overlay when asked); raises on a bad case. ``load`` returns the case's preprocessed data (the
    batch runner's background read); by default the case is read here. Returns the prediction and its files."""
    case_id = case.case_id
    data = load() if load is not None else predictor.load(case.path, case.series_uid)
    pred = predictor.predict(data, case_id, save_prob=opts.save_prob, postprocess=opts.postprocess)
    written = write_prediction(pred, opts.out, opts.provenance, opts.fmt)
    if opts.preview:
        save_preview(data, pred, opts.out)
    if opts.overlays and case_id in opts.overlays:
        save_overlay(data, pred, opts.overlays[case_id], PredictionLayout(opts.out).overlay(case_id))
    return pred, written


def predict_case(predictor: Predictor, case: Case, opts: CaseOptions,
                 load: Callable[[], dict] | None = None) -> CaseOutcome:
    """:func:`predict_and_write` for a batch: a bad case becomes a failed outcome, not an exception."""
    t0 = time.perf_counter()
    case_id, path = case.case_id, case.path
    try:
        pred, _ = predict_and_write(predictor, case, opts, load)
        return CaseOutcome(case_id, path, {"total_s": time.perf_counter() - t0, **pred.seconds})
    except CASE_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        if isinstance(err, torch.cuda.OutOfMemoryError | MemoryError):
            reason = f"out of memory: {reason}"
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
        logger.error("%s: failed: %s", case_id, reason)
        return CaseOutcome(case_id, path, reason=reason)


def save_preview(data: dict, pred: Prediction, out: Path) -> Path:
    """``<case_id>_preview.png``: axial, coronal and sagittal slices through each lesion (see visualize)."""
    ct = xyz_array_to_sitk(data["original"][0].numpy(), pred.geometry)
    return save_preview_png(ct, xyz_array_to_sitk(pred.mask, pred.geometry),
                            PredictionLayout(out).preview(pred.case_id))


def save_overlay(data: dict, pred: Prediction, truth_path: str | None, path: Path) -> None:
    """A PNG of the CT with the predicted mask (and the ground truth, when given) overlaid (the demo's)."""
    ct = xyz_array_to_sitk(data["original"][0].numpy(), pred.geometry)
    truth = sitk.ReadImage(truth_path) if truth_path else None
    save_overlays_png(ct, xyz_array_to_sitk(pred.mask, pred.geometry), truth, path)
