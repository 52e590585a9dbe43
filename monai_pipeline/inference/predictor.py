"""A model file loaded once, applied to volumes: read -> preprocess -> probabilities -> :func:`export_prediction`.

Per case: :func:`~monai_pipeline.transforms.pipeline.prediction_transforms` (one read with SimpleITK, the
model's own preprocessing), :class:`~monai_pipeline.inferers.ProbabilityInferer` (sliding window, optional
mirroring TTA, mixed precision), then the export step shared with the bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from monai_pipeline.config import PipelineConfig, config_from_model_dict
from monai_pipeline.errors import InputError, PipelineError
from monai_pipeline.inference.export import Prediction, export_prediction
from monai_pipeline.inferers import ProbabilityInferer
from monai_pipeline.io.geometry import Geometry
from monai_pipeline.io.paths import case_id_from_path
from monai_pipeline.io.reader import ReadOptions
from monai_pipeline.model_file import (
    describe_training_data,
    load_model_file,
    outside_training_spacing,
    slice_spacing_range,
    synthetic_only,
    versions,
)
from monai_pipeline.postprocess.candidates import check_classifier
from monai_pipeline.postprocess.steps import check_steps
from monai_pipeline.transforms.dictionary import SERIES_KEY
from monai_pipeline.transforms.pipeline import prediction_transforms


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain (MONAI wraps errors raised inside transforms in RuntimeErrors)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def run_transform(transform, data: dict, source: str | Path):
    """Apply a MONAI transform chain; a project error raised inside is re-raised as it is, anything else
    becomes one :class:`InputError` naming ``source`` and the underlying problem."""
    try:
        return transform(data)
    except Exception as err:  # noqa: BLE001 - mapped to one clear line
        cause = root_cause(err)
        if isinstance(cause, PipelineError):
            raise cause from None
        if isinstance(cause, MemoryError):
            raise
        text = str(cause).splitlines()[0] if str(cause) else cause.__class__.__name__
        raise InputError(source, f"could not be preprocessed ({cause.__class__.__name__}: {text})") from err


logger = logging.getLogger(__name__)

CV_FILE = "cv.json"


def ensemble_members(path: Path) -> list[Path]:
    """The model files behind ``path``: itself, or those a folder's ``cv.json`` lists. A ``cv`` folder lists its
    fold models under ``folds`` (fold -> path); a seed ensemble's fold (``cv --seeds N --ensemble``) lists the
    seeds' models of that fold under ``members``. A listed folder is itself such an ensemble, expanded in turn.
    Paths are relative to ``path``."""
    if not path.is_dir():
        return [path]
    index = path / CV_FILE
    if not index.is_file():
        raise InputError(path, f"is a folder without {CV_FILE} (not a monai-pipeline cv folder)")
    try:
        listed = json.loads(index.read_text())
        rels = (listed["members"] if "members" in listed else
                [rel for _, rel in sorted(listed["folds"].items(), key=lambda kv: int(kv[0]))])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise InputError(index, "not a valid cv index (needs a 'folds' mapping or a 'members' list)") from err
    if not isinstance(rels, list) or not all(isinstance(rel, str) for rel in rels):
        raise InputError(index, "not a valid cv index (its 'folds' and 'members' name model files or folders)")
    if not rels:
        raise InputError(index, "lists no models")
    files = []
    for rel in rels:
        member = path / rel
        if not member.exists():
            raise InputError(index, f"lists {rel}, which does not exist")
        files += ensemble_members(member)
    return files


def ensemble_calibration(path: Path, warn: bool = True) -> dict[str, Any]:
    """The lesion-score threshold and second-stage classifier of the fold ensemble a ``cv`` folder makes
    (``min_lesion_score``, ``candidate_classifier``): ``cv.json``'s ``ensemble_operating_point``, chosen on the
    pooled out-of-fold validation results of every fold; a threshold of 0.0 (keep every candidate, warned unless
    not ``warn``) and no classifier for a cv folder written without one."""
    point = json.loads((path / CV_FILE).read_text()).get("ensemble_operating_point")
    if point is None:
        if warn:
            logger.warning("%s has no ensemble operating point (an older cv folder, or calibration off): every "
                           "candidate is kept; set one with --min-score", path / CV_FILE)
        return {"min_lesion_score": 0.0, "candidate_classifier": None}
    return {"min_lesion_score": float(point.get("threshold") or 0.0),
            "candidate_classifier": point.get("classifier")}


#: the inference settings each fold's calibration sets for itself (folds of one cross-validation differ there)
CALIBRATED_SETTINGS = ("min_lesion_score", "candidate_classifier")


def _without_calibration(config: dict) -> dict:
    """A model file's configuration less :data:`CALIBRATED_SETTINGS` and the training seed (what the members of
    an ensemble may differ in)."""
    return {**config, "inference": {k: v for k, v in config["inference"].items() if k not in CALIBRATED_SETTINGS},
            "training": {k: v for k, v in config["training"].items() if k != "seed"}}


def prediction_provenance(model_path: str | Path, cfg: PipelineConfig, read_options: ReadOptions | None = None,
                          save_prob: bool = False, postprocess: bool = True, model_sha256: str | None = None,
                          trained_on: list[str] | None = None, fmt: str = "nifti") -> dict[str, Any]:
    """What makes a prediction what it is: the model file's SHA-256 and every setting that changes the mask,
    plus a hash of those settings (``settings_sha256``) that resume and ``evaluate`` compare, the case ids the
    model was trained on (``evaluate`` refuses to score them) and the software versions."""
    sha = model_sha256 or file_sha256(model_path)
    settings = {"model_sha256": sha, "inference": dataclasses.asdict(cfg.inference),
                "postprocess": dataclasses.asdict(cfg.postprocess) if postprocess else None,
                "save_prob": save_prob, "read_options": dataclasses.asdict(read_options or ReadOptions()),
                "format": fmt}
    settings = json.loads(json.dumps(settings, default=str))  # as stored: lists, not tuples (compared later)
    canonical = json.dumps(settings, sort_keys=True)
    return {"model_sha256": sha, "model_file": str(Path(model_path).resolve()),
            "settings_sha256": hashlib.sha256(canonical.encode()).hexdigest(), "settings": settings,
            "trained_on": sorted(trained_on or []), "versions": versions()}


class Predictor:
    """Loads a model file once and predicts volumes.

    Args:
        model_path: a ``model.pt`` written by ``monai-pipeline train`` (or a bundle's ``models/model.pt``), or a
            ``monai-pipeline cv`` folder (its ``cv.json``): then the fold models' probabilities are averaged.
        device: where the network runs ("cpu", "cuda", "cuda:1"; default: cuda when available).
        inference: overrides of the model's ``inference`` section (``{"overlap": 0.5, "tta": True}``; keys as in
            ``default.yaml``; None values ignored, except ``candidate_classifier: None``, which turns a second
            stage off).
        postprocess: overrides of the model's ``postprocess`` section (``{"steps": {...}}``).
        read_options: how awkward inputs are read (series choice, non-uniform spacing, gantry tilt).
        stitch_device: where the full-volume output is accumulated; "cpu" lets a GPU infer volumes whose
            probabilities would not fit in its memory.
    """

    def __init__(self, model_path: str | Path, device: str | None = None, inference: Mapping[str, Any] | None = None,
                 postprocess: Mapping[str, Any] | None = None, read_options: ReadOptions | None = None,
                 stitch_device: str | None = None):
        overrides = {k: v for k, v in (inference or {}).items() if v is not None or k == "candidate_classifier"}
        #: the arguments that make this predictor (helper processes of a batch build theirs from them)
        self.arguments: dict[str, Any] = {
            "model_path": str(model_path), "device": device, "inference": overrides,
            "postprocess": dict(postprocess or {}), "read_options": read_options, "stitch_device": stitch_device}
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model_path = Path(model_path)
        files = ensemble_members(self.model_path)
        loaded = [load_model_file(f, self.device) for f in files]
        self.networks = [net for net, _ in loaded]
        self.blob = loaded[0][1]
        stored = [_without_calibration(blob["config"]) for _, blob in loaded]
        if any(c != stored[0] for c in stored[1:]):
            raise InputError(self.model_path, "the ensemble's models were trained with different configurations")
        config = self.blob["config"]
        if self.model_path.is_dir():  # a cv folder: the ensemble's own operating point, not the first fold's
            point = ensemble_calibration(self.model_path, warn="min_lesion_score" not in overrides)
            config = {**config, "inference": {**config["inference"], **point}}
        self.cfg: PipelineConfig = config_from_model_dict(config).merged(
            {"inference": overrides, "postprocess": dict(postprocess or {})})
        check_steps(self.cfg.postprocess)
        check_classifier(self.cfg.inference.candidate_classifier)
        self.read_options = read_options or ReadOptions()
        self.transform = prediction_transforms(self.cfg, self.read_options)
        self.inferer = ProbabilityInferer(self.cfg, self.device, stitch_device)
        shas = [file_sha256(f) for f in files]
        self.model_sha256 = shas[0] if len(shas) == 1 else hashlib.sha256(
            ("ensemble:" + ",".join(sorted(shas))).encode()).hexdigest()
        self._trained_on = sorted({c for _, blob in loaded for c in blob.get("trained_on", [])})
        self.synthetic_only = all(synthetic_only(blob) for _, blob in loaded)
        self.training_data = describe_training_data(self.blob)
        #: the slice spacings (mm) the model's training scans span (None: not recorded in an older model file)
        self.trained_slice_spacing = slice_spacing_range([blob for _, blob in loaded])
        self._warned_real = False

    @property
    def network(self) -> torch.nn.Module:
        """The network (the first fold's, for an ensemble)."""
        return self.networks[0]

    @network.setter
    def network(self, net: torch.nn.Module) -> None:
        self.networks = [net]

    @property
    def trained_on(self) -> list[str]:
        """Case ids the model (any fold of an ensemble) was trained on; empty for older or bundle models."""
        return list(self._trained_on)

    def provenance(self, save_prob: bool = False, postprocess: bool = True, fmt: str = "nifti") -> dict[str, Any]:
        """:func:`prediction_provenance` of this predictor's model and settings."""
        return prediction_provenance(self.model_path, self.cfg, self.read_options, save_prob, postprocess,
                                     model_sha256=self.model_sha256, trained_on=self.trained_on, fmt=fmt)

    def load(self, path: str | Path, series_uid: str | None = None) -> dict:
        """Read and preprocess one input: ``{"image": network input, "original": the input grid in HU}``.
        ``series_uid``: the series to read from a DICOM folder holding several (default: the read options')."""
        t0 = time.perf_counter()
        item = {"image": str(path), SERIES_KEY: series_uid} if series_uid else {"image": str(path)}
        data = run_transform(self.transform, item, path)
        data["load_seconds"] = time.perf_counter() - t0
        if min(data["image"].shape[1:]) == 0:
            thr = self.cfg.preprocessing.body_threshold_hu
            raise InputError(path, f"no voxel above {thr} HU to crop the body to (is this a CT in HU?)")
        return data

    def _warn_if_real(self, data: dict) -> None:
        """Once per predictor: a model trained only on synthetic phantoms is about to predict a real scan."""
        if self.synthetic_only and not self._warned_real and not bool(data["original"].meta.get("synthetic")):
            self._warned_real = True
            logger.warning("%s was %s and has never seen real anatomy; %s is a real scan: expect false "
                           "positives (vessels, bowel, bone) and check every lesion", self.model_path,
                           self.training_data, data["original"].meta.get("filename_or_obj"))

    def _warn_if_unlike_training(self, data: dict) -> None:
        """A scan whose slice spacing lies well outside the training scans' (:func:`outside_training_spacing`):
        one warning naming it. On the LIDC-shaped studies, models trained on 1.25-3 mm scans made most of their
        false positives on 5 mm ones (docs/recipe.md, "Ensembling the seeds")."""
        meta = data["original"].meta
        if self.trained_slice_spacing is None or "source_geometry" not in meta:
            return
        spacing = Geometry.from_dict(meta["source_geometry"]).slice_spacing_mm
        if outside_training_spacing(spacing, self.trained_slice_spacing):
            low, high = self.trained_slice_spacing
            logger.warning("%s: slices %.3g mm apart, outside the %.3g-%.3g mm of the scans %s was trained on: "
                           "expect more false positives and check every lesion",
                           meta.get("filename_or_obj"), spacing, low, high, self.model_path)

    @torch.no_grad()
    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(C, X, Y, Z)`` of one preprocessed image ``(1, X, Y, Z)``; an ensemble averages
        its members' probabilities (as nnU-Net ensembles its folds)."""
        acc = None
        for net in self.networks:
            p = self.inferer(image[None], net)[0]
            acc = p if acc is None else acc + p
        return acc / len(self.networks)

    def predict(self, source: str | Path | dict, case_id: str | None = None, save_prob: bool = False,
                postprocess: bool = True) -> Prediction:
        """Mask (input grid), lesion table and timings for one input: a path, or the output of :meth:`load`
        (the batch runner loads the next case in the background)."""

        t0 = time.perf_counter()
        data = source if isinstance(source, dict) else self.load(source)
        self._warn_if_real(data)
        self._warn_if_unlike_training(data)
        t1 = time.perf_counter()
        probs = self.probabilities(data["image"])
        t2 = time.perf_counter()
        cid = case_id or case_id_from_path(data["original"].meta["filename_or_obj"])
        pred = export_prediction(probs, data["image"].affine, data["original"], self.cfg, cid, save_prob, postprocess,
                                 source_files=data.get("source_files"))
        pred.seconds = {"read_preprocess_s": float(data.get("load_seconds", t1 - t0)), "network_s": t2 - t1,
                        "export_s": time.perf_counter() - t2}
        return pred
