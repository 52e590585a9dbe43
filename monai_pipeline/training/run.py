"""``train``: check the data and the run folder, build the datasets, network, optimiser, evaluator and trainer, run,
write the model file; teardown (log handlers, the process group it created) in ``finally``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist
from monai.utils import set_determinism

from monai_pipeline.config import PipelineConfig, dump_config
from monai_pipeline.errors import InputError, Preempted
from monai_pipeline.inferers import use_cpu_bf16
from monai_pipeline.networks import build_network, unwrap
from monai_pipeline.postprocess.steps import check_steps
from monai_pipeline.training.builders import (
    build_evaluator,
    build_optimizer,
    build_scheduler,
    build_trainer,
    check_training_data,
    run_trainer,
    with_intensity_stats,
)
from monai_pipeline.training.checkpoints import attach_checkpointing, check_run_folder, save_final_model
from monai_pipeline.training.context import RunContext
from monai_pipeline.training.distributed import init_distributed, resolve_device, sync_ranks
from monai_pipeline.training.labels import training_labels
from monai_pipeline.training.logs import setup_run_logging, teardown_run_logging
from monai_pipeline.training.preemption import PREEMPTED_MARKER, PreemptionHandler, save_preemption_checkpoint

logger = logging.getLogger(__name__)


def prepare_data(manifest: str | Path, fold: int | None, cfg: PipelineConfig) -> tuple[list[dict], list[dict]]:
    """The fold's (training, validation) entries, checked before the run folder or its log is created; the
    training entries carry the label of ``training.label_mode``."""
    check_steps(cfg.postprocess)  # a model whose post-processing cannot run is refused before it trains
    train_files, val_files = check_training_data(manifest, fold, cfg.network.out_channels)
    if cfg.training.label_mode == "soft" and cfg.network.out_channels != 2:
        raise InputError(manifest, "training.label_mode soft needs a two-class network (out_channels 2)")
    return training_labels(train_files, cfg.training.label_mode, manifest), val_files


def fit(rc: RunContext, train_files: list[dict], val_files: list[dict], ckpt: Path | None) -> Path:
    """Build the network, optimiser, schedule, evaluator and trainer of ``rc``, run them, and write the model
    file (rank 0); raises :class:`Preempted` after writing a checkpoint when a scheduler's signal stopped it."""
    cfg, ctx, dev = rc.cfg, rc.dist, rc.device
    network = build_network(cfg.network).to(dev)
    if ctx.world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = build_optimizer(cfg, network.parameters())
    scheduler = build_scheduler(cfg, optimizer, rc.max_epochs)
    evaluator = build_evaluator(rc, val_files, network)
    trainer = build_trainer(rc, train_files, network, optimizer, scheduler, evaluator)
    save_dict = {"network": unwrap(network), "optimizer": optimizer}
    if scheduler is not None:
        save_dict["lr_scheduler"] = scheduler
    attach_checkpointing(rc, trainer, save_dict, ckpt, evaluator, optimizer)
    if ctx.is_main:
        (rc.run / PREEMPTED_MARKER).unlink(missing_ok=True)  # this run may end normally
    preemption = PreemptionHandler(ctx, dev)
    preemption.attach(trainer)
    preemption.install()
    try:
        run_trainer(trainer, cfg.training.cache)
        if preemption.stopped and trainer.state.iteration < rc.max_epochs * (trainer.state.epoch_length or 1):
            if ctx.is_main:
                path = save_preemption_checkpoint(rc.run, save_dict, trainer)
                logger.warning("preempted: checkpoint %s written; resubmit with --resume", path)
            if ctx.world_size > 1:
                dist.barrier()
            raise Preempted(f"{rc.run}: training preempted at epoch {trainer.state.epoch}, iteration "
                            f"{trainer.state.iteration}; checkpoint written, rerun with --resume to continue")
        if ctx.world_size > 1:
            sync_ranks(network, rc.run, ctx, int(trainer.state.epoch))
        if ctx.is_main:
            save_final_model(rc.run, network, cfg, evaluator, int(trainer.state.epoch), dev, train_files, val_files)
        if ctx.world_size > 1:
            dist.barrier()
    finally:
        preemption.restore()
    return rc.run / "model.pt"


def train(manifest: str | Path, run: str | Path, cfg: PipelineConfig, fold: int | None = None,
          epochs: int | None = None, device: str | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train a network as configured; returns the path of ``RUN/model.pt``.

    ``resume`` continues from ``RUN/checkpoints/last_checkpoint_epoch=N.pt`` (weights, optimizer, scheduler and
    epoch counter), so a run killed mid-way ends where an uninterrupted one would. Under ``torchrun`` the same
    code trains with DistributedDataParallel (nccl on GPUs, gloo on CPUs); only rank 0 logs and writes files.
    """
    run = Path(run)
    ctx = init_distributed(device or "auto")
    fh = None
    try:
        dev = resolve_device(device, ctx)
        max_epochs = int(epochs or cfg.training.epochs)
        cfg = cfg.merged({"training": {"epochs": max_epochs}})
        set_determinism(seed=cfg.training.seed + ctx.rank)
        train_files, val_files = prepare_data(manifest, fold, cfg)
        ckpt = check_run_folder(run, resume, ctx.is_main)
        fh = setup_run_logging(run, ctx.is_main)
        cfg = with_intensity_stats(cfg, train_files)
        if ctx.is_main:
            dump_config(cfg, run / "config.yaml")
            logger.info("training on %d cases, validating on %d, device %s, world size %d", len(train_files),
                        len(val_files), dev, ctx.world_size)
        cpu_bf16 = use_cpu_bf16(cfg.training.bf16, dev)
        if cpu_bf16:
            logger.info("training with bf16 autocast on the CPU (float32 weights and loss)")
        rc = RunContext(cfg, run, dev, ctx, cpu_bf16, max_epochs, progress)
        return fit(rc, train_files, val_files, ckpt)
    finally:
        if ctx.world_size > 1 and ctx.owns_group and dist.is_initialized():
            # an undestroyed gloo group is torn down by interpreter exit, which can abort the process
            # ("terminate called without an active exception") after a successful run
            dist.destroy_process_group()
        teardown_run_logging(fh)
