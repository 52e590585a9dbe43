"""Glue between a MONAI bundle (``bundles/lung_nodule_ct_segmentation``) and the library.

The bundle's JSON configs reach the library through ``$`` expressions, so the bundle and the CLI share one
implementation and one configuration (:func:`monai_pipeline.config.bundle_config`): its inference runs
:func:`~monai_pipeline.transforms.pipeline.prediction_transforms`,
:class:`~monai_pipeline.inferers.ProbabilityInferer` and :class:`~monai_pipeline.inference.ExportPredictiond`,
exactly what ``monai-pipeline infer`` runs. Everything here works on a bundle folder copied anywhere (as
``monai.bundle download`` delivers bundles) with ``--dataset_dir DIR`` holding ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from monai.data import load_decathlon_datalist

from monai_pipeline.calibration import operating_point
from monai_pipeline.config import (
    BUNDLE_CONFIG,
    BUNDLE_MODEL_CONFIG,
    PipelineConfig,
    bundle_config,
    config_from_model_dict,
    dump_config,
)
from monai_pipeline.errors import InputError
from monai_pipeline.evaluation import evaluate_folder, headline
from monai_pipeline.inference import prediction_provenance
from monai_pipeline.io.paths import case_id_from_path
from monai_pipeline.io.reader import is_image_path
from monai_pipeline.io.writer import atomic_path, atomic_write_text
from monai_pipeline.model_file import describe_training_data, kept_weights, load_model_file
from monai_pipeline.networks import unwrap

logger = logging.getLogger(__name__)


def save_model_config(cfg: PipelineConfig, bundle_root: str | Path) -> Path:
    """Record the configuration a bundle model was trained with beside it (``models/pipeline.yaml``)."""
    return dump_config(cfg, Path(bundle_root) / BUNDLE_MODEL_CONFIG)


def finish_training(network: torch.nn.Module, cfg: PipelineConfig, bundle_root: str | Path,
                    val_files: list[dict] | None = None, device: str | torch.device = "cpu") -> Path:
    """The end of the bundle's training, as ``monai-pipeline train`` ends: ``models/model.pt`` holds the weights
    ``training.keep`` names: the network as the last epoch left it (``final``), or the best validation weights
    (``best``: saved by the evaluator's checkpoint saver; the last ones when no validation ran, with fewer epochs
    than ``training.val_interval``). Then the configuration beside them
    (``models/pipeline.yaml``) and, with ``val_files`` (the validation datalist) and
    ``training.operating_fp_per_scan`` > 0, the operating point chosen on them, as ``train`` chooses it
    (:func:`~monai_pipeline.calibration.operating_point`): ``inference.min_lesion_score`` (and, with
    ``training.fp_reduction``, ``inference.candidate_classifier``) in the configuration and
    ``models/operating_point.json``."""
    path = Path(bundle_root) / "models" / "model.pt"
    final = cfg.training.keep == "final"
    if final or not path.is_file():
        logger.info("%s: %s holds the last epoch's weights", "training.keep is final" if final else
                    "no validation ran", path)
        with atomic_path(path) as tmp:
            torch.save(unwrap(network).state_dict(), tmp)
    written = save_model_config(cfg, bundle_root)
    if not val_files or cfg.training.operating_fp_per_scan <= 0:
        return written
    cases = [{**e, "case_id": e.get("case_id") or case_id_from_path(e["image"])} for e in val_files]
    point = operating_point(path, cases, cfg.training.operating_fp_per_scan, device,
                            fp_reduction=cfg.training.fp_reduction)
    atomic_write_text(path.parent / "operating_point.json", json.dumps(point, indent=1) + "\n")
    calibrated = {"candidate_classifier": point["classifier"]}
    if point["threshold"] is not None:
        calibrated["min_lesion_score"] = point["threshold"]
    return save_model_config(cfg.merged({"inference": calibrated}), bundle_root)


def export_to_bundle(model_path: str | Path, bundle_root: str | Path) -> Path:
    """Drop a ``monai-pipeline train`` model into a bundle: ``models/model.pt`` (the state dict, as model-zoo
    checkpoints are), ``models/pipeline.yaml`` (its configuration) and ``models/model_card.json`` (what it was
    trained on: case count per source, e.g. synthetic phantoms only; the epochs; the best validation Dice)."""

    root = Path(bundle_root)
    if not (root / BUNDLE_CONFIG).is_file():
        raise InputError(root, f"is not a monai-pipeline bundle (no {BUNDLE_CONFIG})")
    net, blob = load_model_file(model_path)
    with atomic_path(root / "models" / "model.pt") as tmp:
        torch.save(net.state_dict(), tmp)
    save_model_config(config_from_model_dict(blob["config"]), root)
    card = {"training_data": blob.get("training_data"), "summary": describe_training_data(blob),
            "n_trained_on": len(blob.get("trained_on", [])), "validated_on": blob.get("validated_on", []),
            "epochs_trained": blob.get("epochs_trained"), "weights": kept_weights(blob),
            "best_val_mean_dice": blob.get("best_val_mean_dice")}
    atomic_write_text(root / "models" / "model_card.json", json.dumps(card, indent=1))
    return root / "models" / "model.pt"


def inference_config(bundle_root: str | Path) -> PipelineConfig:
    """The configuration a bundle's inference and evaluation run with (:func:`~monai_pipeline.config.bundle_config`),
    refusing, with one line and before any weights are loaded, ``models/model.pt`` without ``models/pipeline.yaml``
    (the settings it was trained with, which ``large_files.yml`` lists beside it): with the defaults instead, the
    network may not match the weights, and the intensity normalisation and lesion threshold would differ
    silently."""
    root = Path(bundle_root)
    weights, settings = root / "models" / "model.pt", root / BUNDLE_MODEL_CONFIG
    if weights.is_file() and not settings.is_file():
        raise InputError(weights, f"has no {settings.name} beside it: the settings it was trained with "
                                  "(large_files.yml delivers both; export-bundle and train.json write both)")
    return bundle_config(root)


def provenance_on_first_use(ckpt_path: str | Path, cfg: PipelineConfig) -> Callable[[], dict]:
    """The bundle's provenance, as a function :class:`~monai_pipeline.inference.ExportPredictiond` calls at its
    first prediction, after the engine's ``CheckpointLoader`` ran: so ``inference.json`` parses without weights
    (as model-zoo's tests parse it). With no weights file at all (a config test, the loader disabled), the record
    says so (``model_sha256: "untrained"``) and a warning is logged."""

    ckpt = Path(ckpt_path)

    def record() -> dict:
        if not ckpt.is_file():
            logger.warning("no weights at %s: predictions come from an untrained network", ckpt)
            return prediction_provenance(ckpt, cfg, model_sha256="untrained")
        return prediction_provenance(ckpt, cfg)

    return record


def inference_inputs(datalist: str | Path, dataset_dir: str | Path, section: str = "test") -> list[dict]:
    """Cases to infer: the ``section`` of the datalist (paths relative to ``dataset_dir``) when it exists and
    lists cases, else every image file and DICOM folder directly under ``dataset_dir`` (or its ``images/``)."""

    if Path(datalist).is_file() and json.loads(Path(datalist).read_text()).get(section):
        entries = load_decathlon_datalist(str(datalist), data_list_key=section, base_dir=str(dataset_dir))
        return [{"image": e["image"], "case_id": e.get("case_id") or case_id_from_path(e["image"])} for e in entries]
    base = Path(dataset_dir)
    base = base / "images" if (base / "images").is_dir() else base
    if not base.is_dir():
        raise InputError(base, "no datalist and no image folder to infer")
    found = sorted(p for p in base.iterdir() if is_image_path(p) and not p.name.startswith(".") and
                   not p.name.endswith(".json"))
    return [{"image": str(p), "case_id": case_id_from_path(p)} for p in found]


def evaluate(pred_dir: str | Path, datalist: str | Path, dataset_dir: str | Path, out: str | Path,
             sections: tuple[str, ...] = ("validation", "test")) -> dict:
    """The library's evaluation of the bundle's predictions (paths in ``datalist`` relative to ``dataset_dir``);
    writes ``metrics.csv`` and ``summary.json`` into ``out`` and logs the mean Dice."""

    res = evaluate_folder(pred_dir, datalist, out, sections=sections, base_dir=dataset_dir)

    logger.info("%s", headline(res))
    return res
