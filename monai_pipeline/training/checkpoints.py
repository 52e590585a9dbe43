"""Checkpoints of a run: the per-epoch "last" checkpoint (``--resume``), the best validation weights (kept across
resumes), and the final self-describing ``model.pt``."""

from __future__ import annotations

import glob
import json
import logging
import re
import zipfile
from pathlib import Path

import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointLoader, EarlyStopHandler, stopping_fn_from_metric

from monai_pipeline.config import PipelineConfig
from monai_pipeline.errors import InputError
from monai_pipeline.io.geometry import header_geometry
from monai_pipeline.io.writer import atomic_path, atomic_write_text
from monai_pipeline.model_file import save_model_file, training_data_card
from monai_pipeline.networks import unwrap
from monai_pipeline.training.context import RunContext
from monai_pipeline.training.logs import CSVLogger, plot_training_curve, reconcile_log

logger = logging.getLogger(__name__)


LAST_PREFIX = "last"
BEST_NAME = "best_network.pt"
BEST_RECORD = "best.json"


def checkpoint_epoch(path: str | Path) -> int:
    """The epoch of a ``last_checkpoint_epoch=N.pt`` file."""
    return int(re.search(r"epoch=(\d+)", str(path)).group(1))


def latest_checkpoint(run: str | Path) -> Path | None:
    """The most recent complete ``checkpoints/last_checkpoint_epoch=N.pt`` of a run, or None.

    :func:`write_last_checkpoint` writes atomically, so a kill never leaves a partial file under this name; a file
    truncated otherwise (a full disk, a copy cut short, an older version that wrote in place) is no zip file
    (torch's format ends with its central directory) and is skipped, with a warning, for an earlier one."""
    cands = glob.glob(str(Path(run) / "checkpoints" / f"{LAST_PREFIX}_checkpoint_epoch=*.pt"))
    for p in sorted(cands, key=lambda p: int(re.search(r"epoch=(\d+)", p).group(1)), reverse=True):
        if zipfile.is_zipfile(p):
            return Path(p)
        logger.warning("%s is incomplete (the run was stopped while writing it); using an earlier checkpoint", p)
    return None


def write_last_checkpoint(run: Path, save_dict: dict, trainer: SupervisedTrainer) -> Path:
    """``checkpoints/last_checkpoint_epoch=N.pt`` (N = the trainer's epoch): the ``state_dict`` of every object in
    ``save_dict`` and of the trainer (its epoch and iteration counters), written atomically; the older "last"
    checkpoints and any partial file a killed writer left are removed only after it is in place.

    This replaces MONAI's ``CheckpointSaver`` (ignite's ``Checkpoint``), which deletes the previous checkpoint
    *before* writing the new one in place: a kill in between left nothing to resume from."""
    folder = run / "checkpoints"
    path = folder / f"{LAST_PREFIX}_checkpoint_epoch={trainer.state.epoch}.pt"
    with atomic_path(path) as tmp:
        torch.save({k: v.state_dict() for k, v in {**save_dict, "trainer": trainer}.items()}, tmp)
    for old in folder.glob(f"{LAST_PREFIX}_checkpoint_epoch=*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    for part in folder.glob(f".{LAST_PREFIX}_checkpoint_epoch=*.part*"):
        part.unlink(missing_ok=True)
    return path


def check_run_folder(run: Path, resume: bool, is_main: bool) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); refuses to train over an existing run."""
    ckpt = latest_checkpoint(run) if resume else None
    if resume and ckpt is None:
        raise InputError(run, "nothing to resume: no checkpoints/last_checkpoint_epoch=*.pt")
    if not resume and is_main and latest_checkpoint(run) is not None:
        raise InputError(run, "already holds a training run", hint="use --resume to continue it or a new --out")
    return ckpt


class BestCheckpoint:
    """Keeps ``checkpoints/best_network.pt`` as the weights with the highest validation Dice of the whole run,
    resumes and preemptions included: the best score is kept beside it (``best.json``), so a validation after a
    resume replaces the weights only when it really improves (MONAI's saver keeps the score in memory only)."""

    def __init__(self, run: Path, network, metric: str = "val_mean_dice"):
        self.path, self.record = run / "checkpoints" / BEST_NAME, run / "checkpoints" / BEST_RECORD
        self.network, self.metric = network, metric

    def best(self) -> dict | None:
        try:
            return json.loads(self.record.read_text()) if self.record.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None

    def attach(self, evaluator: SupervisedEvaluator) -> None:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, evaluator: SupervisedEvaluator) -> None:
        score = float(evaluator.state.metrics[self.metric])
        previous = self.best()
        if previous is not None and not score > float(previous["score"]):
            return
        with atomic_path(self.path) as tmp:
            torch.save(unwrap(self.network).state_dict(), tmp)
        atomic_write_text(self.record, json.dumps({"score": score, "epoch": int(evaluator.state.epoch),
                                                   "metric": self.metric}))
        logger.info("best %s so far: %.4f at epoch %d", self.metric, score, evaluator.state.epoch)


def slice_spacings(files: list[dict]) -> list[float] | None:
    """The slice spacing (mm) of each file's ``image``, from its header; None when one cannot be read that way
    (e.g. a DICOM folder): then the model records no range."""
    try:
        return [header_geometry(f["image"]).slice_spacing_mm for f in files]
    except RuntimeError:  # SimpleITK: not a single image file
        logger.info("slice spacings of the training scans not recorded (an image is not a single file)")
        return None


def save_final_model(run: Path, network, cfg: PipelineConfig, evaluator, epochs: int, dev: torch.device,
                     train_files: list[dict], val_files: list[dict]) -> Path:
    """``RUN/model.pt``: the weights ``training.keep`` names (``final``: the network as the last epoch left it;
    ``best``: the best validation checkpoint, when a validation ran); records which (``weights``, and the best
    score and epoch for ``best``), the case ids trained on (``evaluate`` refuses to score them) and those used for
    model selection."""
    best = run / "checkpoints" / BEST_NAME
    extra = {"epochs_trained": epochs, "trained_on": sorted(f["case_id"] for f in train_files),
             "validated_on": sorted(f["case_id"] for f in val_files),
             "training_data": training_data_card(train_files, slice_spacings(train_files)), "weights": "final"}
    if cfg.training.keep == "best" and best.exists():
        unwrap(network).load_state_dict(torch.load(best, map_location=dev, weights_only=True))
        record = BestCheckpoint(run, network).best()
        extra["weights"] = "best"
        extra["best_val_mean_dice"] = float(record["score"]) if record else None
        extra["best_epoch"] = int(record["epoch"]) if record else None
    path = save_model_file(run / "model.pt", network, cfg, extra)
    plot_training_curve(run)
    logger.info("model written to %s", path)
    return path


def attach_checkpointing(rc: RunContext, trainer: SupervisedTrainer, save_dict: dict, ckpt: Path | None,
                         evaluator: SupervisedEvaluator | None, optimizer) -> None:
    """Resume from ``ckpt``; on rank 0 the per-epoch "last" checkpoint (with the trainer's epoch counter),
    ``log.csv`` and the progress bar; early stopping on the validation Dice when configured. A fresh run starts
    ``log.csv`` anew (rows a run killed before its first checkpoint wrote are not its own)."""
    if ckpt is not None:
        CheckpointLoader(load_path=str(ckpt), load_dict={**save_dict, "trainer": trainer},
                         map_location=rc.device).attach(trainer)
        logger.info("resuming from %s", ckpt)
    if rc.dist.is_main:
        reconcile_log(rc.run / "log.csv", checkpoint_epoch(ckpt) if ckpt is not None else 0)
        # the epoch's log row first, then its checkpoint: a kill between the two leaves a row beyond the
        # checkpoint, which resume drops and logs again (every epoch counted once)
        CSVLogger(rc.run / "log.csv", optimizer, evaluator).attach(trainer)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: write_last_checkpoint(rc.run, save_dict, e))
        if rc.progress:
            ProgressBar(persist=False).attach(trainer, output_transform=lambda out: {"loss": float(
                out[0]["loss"] if isinstance(out, list) else out["loss"])})
    patience = rc.cfg.training.early_stopping_patience
    if evaluator is not None and patience > 0:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, EarlyStopHandler(
            patience=patience, score_function=stopping_fn_from_metric("val_mean_dice"),
            trainer=trainer, epoch_level=True))
