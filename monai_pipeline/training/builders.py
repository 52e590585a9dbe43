"""The pieces of a training run, built from the configuration: datasets, intensity statistics, optimiser and
schedule, the validation evaluator and the trainer. ``train`` and the bundle's ``train.json`` build the optimiser,
the schedule and the validation interval with the same functions."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, set_track_meta
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, MeanDice, StatsHandler, ValidationHandler, from_engine
from monai.inferers import SimpleInferer
from monai.transforms import AsDiscreted, Compose

from monai_pipeline.config import PipelineConfig
from monai_pipeline.data.check import check_dataset
from monai_pipeline.data.manifest import split_for_fold
from monai_pipeline.errors import InputError
from monai_pipeline.inferers import AutocastInferer, build_sliding_window
from monai_pipeline.io.geometry import sitk_to_xyz_array
from monai_pipeline.io.reader import read_ct, read_label
from monai_pipeline.networks import unwrap
from monai_pipeline.training.checkpoints import BestCheckpoint
from monai_pipeline.training.context import RunContext
from monai_pipeline.training.labels import DATA_KEYS, build_loss, build_prepare_batch, data_keys
from monai_pipeline.training.logs import tensorboard_handlers
from monai_pipeline.transforms.array import foreground_intensity_stats
from monai_pipeline.transforms.pipeline import train_transforms, val_transforms

logger = logging.getLogger(__name__)


def make_dataset(files: list[dict], transform: Compose, cache: str, cache_dir: Path, num_workers: int = 0,
                 keys: tuple[str, ...] = DATA_KEYS):
    """Dataset with the configured caching: none, memory (``CacheDataset``) or disk (``PersistentDataset``), of
    the ``keys`` (default :data:`DATA_KEYS`) of each entry."""
    files = [{k: f[k] for k in keys if k in f} for f in files]
    if cache == "memory":
        return CacheDataset(files, transform, cache_rate=1.0, num_workers=max(1, num_workers) if num_workers else None,
                            progress=False)
    if cache == "disk":
        cache_dir.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(files, transform, cache_dir=cache_dir)
    return Dataset(files, transform)


def compute_intensity_stats(files: list[dict]) -> dict[str, float]:
    """Foreground HU statistics of the training images (nnU-Net fingerprint), read once with SimpleITK."""
    imgs, labs = [], []
    for f in files:
        imgs.append(sitk_to_xyz_array(read_ct(f["image"]).image))
        labs.append(sitk_to_xyz_array(read_label(f["label"]).image))
    return foreground_intensity_stats(imgs, labs)


def with_intensity_stats(cfg: PipelineConfig, train_files: list[dict]) -> PipelineConfig:
    """nnU-Net normalisation needs the training set's foreground HU statistics: computed once, stored in cfg."""
    if cfg.preprocessing.normalization != "nnunet" or cfg.preprocessing.intensity_stats:
        return cfg
    stats = compute_intensity_stats(train_files)
    logger.info("foreground intensity statistics (HU): %s", stats)
    return cfg.merged({"preprocessing": {"intensity_stats": stats}})


def check_training_data(manifest: str | Path, fold: int | None, n_classes: int) -> tuple[list[dict], list[dict]]:
    """(training, validation) entries of the fold; every case must have a label, and the dataset check
    (:func:`~monai_pipeline.data.check.check_dataset`: files, grids, label values, splits) must find no error."""
    train_files, val_files = split_for_fold(manifest, fold)
    if not train_files:
        raise InputError(manifest, "has no training cases for this fold")
    for f in train_files + val_files:
        if not f.get("label"):
            raise InputError(manifest, f"case {f.get('case_id')} has no label")
    report = check_dataset(manifest, n_classes=n_classes, case_ids={f["case_id"] for f in train_files + val_files})
    for w in report.warnings:
        logger.warning("check: %s: %s", w.case_id, w.message)
    if report.empty_labels:
        logger.info("check: %d case(s) have an empty label: %s", len(report.empty_labels),
                    ", ".join(report.empty_labels))
    if report.errors:
        first = report.errors[0]
        raise InputError(manifest, f"{len(report.errors)} dataset problem(s), first: {first.case_id}: {first.message}",
                         hint=f"monai-pipeline check --manifest {manifest} lists them all")
    return train_files, val_files


def build_optimizer(cfg: PipelineConfig, params) -> torch.optim.Optimizer:
    """``training.optimizer``: AdamW, or SGD with Nesterov momentum 0.99 (nnU-Net's), at ``training.lr``."""
    t = cfg.training
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.99, nesterov=True, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def build_scheduler(cfg: PipelineConfig, optimizer, epochs: int):
    """``training.scheduler`` over ``epochs`` (stepped once per epoch): cosine down to 1 % of the learning rate,
    poly (power 0.9, nnU-Net's), or None."""
    s = cfg.training.scheduler
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=cfg.training.lr * 0.01)
    if s == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs, power=0.9)
    return None


def build_evaluator(rc: RunContext, val_files: list[dict], network) -> SupervisedEvaluator | None:
    """Validation in network space (sliding window, Dice per case); rank 0 keeps the best checkpoint."""
    if not val_files:
        return None
    cfg, t = rc.cfg, rc.cfg.training
    val_ds = make_dataset(val_files, val_transforms(cfg), t.cache, rc.run / "cache")
    sampler = torch.utils.data.distributed.DistributedSampler(val_ds, shuffle=False) if rc.dist.world_size > 1 else None
    val_loader = DataLoader(val_ds, batch_size=1, sampler=sampler, num_workers=t.num_workers)
    handlers: list = []
    if rc.dist.is_main:
        handlers = [StatsHandler(iteration_log=False, name="monai_pipeline.trainer"), BestCheckpoint(rc.run, network)]
    n_classes = cfg.network.out_channels
    post = Compose([AsDiscreted(keys="pred", argmax=True, to_onehot=n_classes),
                    AsDiscreted(keys="label", to_onehot=n_classes)])
    window = build_sliding_window(cfg)
    return SupervisedEvaluator(
        device=rc.device, val_data_loader=val_loader, network=unwrap(network),
        inferer=AutocastInferer(window) if rc.cpu_bf16 else window, postprocessing=post,
        key_val_metric={"val_mean_dice": MeanDice(include_background=False,
                                                  output_transform=from_engine(["pred", "label"]))},
        val_handlers=handlers, amp=bool(t.amp) and rc.device.type == "cuda", decollate=True)


def schedule_handlers(scheduler, evaluator: SupervisedEvaluator | None, val_interval: int) -> list:
    """The trainer's handlers that step the learning rate each epoch and validate every ``val_interval`` epochs
    (``train`` and the bundle's ``train.json`` attach these)."""
    handlers: list = []
    if scheduler is not None:
        handlers.append(LrScheduleHandler(lr_scheduler=scheduler, print_lr=False))
    if evaluator is not None:
        handlers.append(ValidationHandler(validator=evaluator, interval=val_interval, epoch_level=True,
                                          exec_at_start=False))
    return handlers


def build_trainer(rc: RunContext, train_files: list[dict], network, optimizer, scheduler,
                  evaluator: SupervisedEvaluator | None) -> SupervisedTrainer:
    """``SupervisedTrainer`` on random patches with DiceCE, the LR schedule and validation every
    ``training.val_interval`` epochs."""
    cfg, t = rc.cfg, rc.cfg.training
    train_ds = make_dataset(train_files, train_transforms(cfg), t.cache, rc.run / "cache", keys=data_keys(t.label_mode))
    sampler = torch.utils.data.distributed.DistributedSampler(train_ds,
                                                              shuffle=True) if rc.dist.world_size > 1 else None
    train_loader = DataLoader(train_ds, batch_size=t.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=t.num_workers, drop_last=False)
    handlers = schedule_handlers(scheduler, evaluator, t.val_interval)
    if rc.dist.is_main:
        handlers.append(StatsHandler(tag_name="train_loss", output_transform=from_engine(["loss"], first=True),
                                     iteration_log=False, name="monai_pipeline.trainer"))
        handlers += tensorboard_handlers(rc.run / "tensorboard")
    return SupervisedTrainer(
        device=rc.device, max_epochs=rc.max_epochs, train_data_loader=train_loader, network=network,
        optimizer=optimizer, loss_function=build_loss(cfg), prepare_batch=build_prepare_batch(cfg),
        inferer=AutocastInferer(SimpleInferer()) if rc.cpu_bf16 else SimpleInferer(), train_handlers=handlers,
        amp=bool(t.amp) and rc.device.type == "cuda", decollate=False)


def run_trainer(trainer: SupervisedTrainer, cache: str) -> None:
    """Run; with the deterministic part cached in memory the random transforms need no metadata, and plain
    tensors are faster (MONAI's fast-training recipe). Metadata tracking is restored whatever happens."""
    fast_meta = cache == "memory"
    if fast_meta:
        set_track_meta(False)
    try:
        trainer.run()
    finally:
        if fast_meta:
            set_track_meta(True)
