"""Training on 3D patches with ``monai.engines.SupervisedTrainer``/``SupervisedEvaluator`` and ignite handlers.

``RUN/`` receives: ``checkpoints/`` (last epoch, for ``--resume``; best by validation Dice), ``model.pt`` (the
self-describing model file), ``config.yaml`` (the merged configuration), ``log.csv`` (one row per epoch),
``train.log``, ``tensorboard/`` and ``training_curve.png``. Under ``torchrun`` the same code trains with
DistributedDataParallel (nccl on GPUs, gloo on CPUs); only rank 0 logs and writes files.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, set_track_meta
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    CheckpointLoader,
    CheckpointSaver,
    EarlyStopHandler,
    LrScheduleHandler,
    MeanDice,
    StatsHandler,
    ValidationHandler,
    from_engine,
    stopping_fn_from_metric,
)
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss
from monai.transforms import AsDiscreted, Compose
from monai.utils import set_determinism

from monai_pipeline.config import dump_config
from monai_pipeline.data.manifest import split_for_fold
from monai_pipeline.errors import InputError
from monai_pipeline.inference import AutocastInferer, build_inferer, use_cpu_bf16
from monai_pipeline.networks import build_network, save_model_file, unwrap
from monai_pipeline.transforms.pipeline import train_transforms, val_transforms

logger = logging.getLogger(__name__)
LAST_PREFIX = "last"
BEST_NAME = "best_network.pt"


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # this process created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend)
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), backend, owns)
    if backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    # ignite sets up its own view of the process group lazily, with a collective (new_group), the first time
    # anything asks for the rank, e.g. a checkpoint saver that only rank 0 creates: do it now, on every rank
    import ignite.distributed as idist

    idist.sync()
    return ctx


def resolve_device(device: str | None, ctx: DistContext | None = None) -> torch.device:
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, "device must be 'cpu' when no CUDA GPU is available, got 'cuda'")
    if device == "cuda" and ctx is not None and ctx.world_size > 1:
        device = f"cuda:{ctx.local_rank}"
    return torch.device(device)


def make_dataset(files: list[dict], transform: Compose, cache: str, cache_dir: Path, num_workers: int = 0):
    """Dataset with the configured caching: none, memory (``CacheDataset``) or disk (``PersistentDataset``)."""
    if cache == "memory":
        return CacheDataset(files, transform, cache_rate=1.0, num_workers=max(1, num_workers) if num_workers else None,
                            progress=False)
    if cache == "disk":
        cache_dir.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(files, transform, cache_dir=cache_dir)
    return Dataset(files, transform)


def compute_intensity_stats(files: list[dict]) -> dict[str, float]:
    """Foreground HU statistics of the training images (nnU-Net fingerprint), read once with SimpleITK."""
    from monai_pipeline.io.geometry import sitk_to_xyz_array
    from monai_pipeline.io.reader import read_ct
    from monai_pipeline.transforms.array import foreground_intensity_stats

    imgs, labs = [], []
    for f in files:
        imgs.append(sitk_to_xyz_array(read_ct(f["image"]).image))
        labs.append(sitk_to_xyz_array(read_ct(f["label"]).image))
    return foreground_intensity_stats(imgs, labs)


class CSVLogger:
    """Appends one row per epoch to ``log.csv``: epoch, mean train loss, learning rate, validation Dice, seconds."""

    FIELDS = ("epoch", "train_loss", "lr", "val_mean_dice", "seconds")

    def __init__(self, path: Path, optimizer: torch.optim.Optimizer, evaluator: SupervisedEvaluator | None):
        self.path, self.optimizer, self.evaluator = path, optimizer, evaluator
        self._losses: list[float] = []
        self._t0 = time.time()

    def attach(self, engine: SupervisedTrainer) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iter)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _start(self, engine) -> None:
        self._losses, self._t0 = [], time.time()

    def _iter(self, engine) -> None:
        self._losses.append(float(engine.state.output[0]["loss"] if isinstance(engine.state.output, list)
                                  else engine.state.output["loss"]))

    def _epoch(self, engine) -> None:
        val = ""
        if self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch:
            val = f"{self.evaluator.state.metrics.get('val_mean_dice', float('nan')):.5f}"
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(self.FIELDS)
            w.writerow([engine.state.epoch, f"{np.mean(self._losses):.5f}", f"{self.optimizer.param_groups[0]['lr']:.6g}",
                        val, f"{time.time() - self._t0:.1f}"])


def read_log(path: str | Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def plot_training_curve(run: Path) -> Path | None:
    log = run / "log.csv"
    if not log.exists():
        return None
    rows = read_log(log)
    epochs = [int(r["epoch"]) for r in rows]
    loss = [float(r["train_loss"]) for r in rows]
    val = [(int(r["epoch"]), float(r["val_mean_dice"])) for r in rows if r["val_mean_dice"]]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_pipeline.io.writer import atomic_path

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=90)
    ax.plot(epochs, loss, color="tab:blue", label="train loss (DiceCE)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if val:
        ax2 = ax.twinx()
        ax2.plot([v[0] for v in val], [v[1] for v in val], "o-", color="tab:green", label="validation Dice")
        ax2.set_ylabel("Dice")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(run / "training_curve.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return run / "training_curve.png"


def weights_fingerprint(network: torch.nn.Module) -> str:
    """SHA-256 of the network's parameters and buffers (name order), to compare ranks or runs."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(unwrap(network).state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_rank_record(run: Path, ctx: DistContext, network: torch.nn.Module, epochs: int) -> None:
    import json

    from monai_pipeline.io.writer import atomic_write_text

    atomic_write_text(run / "ranks" / f"rank{ctx.rank}.json", json.dumps(
        {"rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend, "epochs": epochs,
         "weights_sha256": weights_fingerprint(network)}))


def latest_checkpoint(run: str | Path) -> Path | None:
    """The most recent ``checkpoints/last_checkpoint_epoch=N.pt`` of a run, or None."""
    cands = glob.glob(str(Path(run) / "checkpoints" / f"{LAST_PREFIX}_checkpoint_epoch=*.pt"))
    if not cands:
        return None
    return Path(max(cands, key=lambda p: int(re.search(r"epoch=(\d+)", p).group(1))))


def _setup_logging(run: Path, is_main: bool) -> logging.Handler | None:
    if not is_main:
        return None
    run.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(run / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("monai_pipeline", "ignite", "monai_pipeline.trainer"):
        logging.getLogger(name).addHandler(fh)
        logging.getLogger(name).setLevel(logging.INFO)
    return fh


def build_optimizer(cfg: dict, params) -> torch.optim.Optimizer:
    t = cfg["training"]
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=0.99, nesterov=True, weight_decay=t["weight_decay"])
    return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])


def build_scheduler(cfg: dict, optimizer, epochs: int):
    s = cfg["training"]["scheduler"]
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=cfg["training"]["lr"] * 0.01)
    if s == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs, power=0.9)
    return None


def train(manifest: str | Path, run: str | Path, cfg: dict, fold: int | None = None, epochs: int | None = None,
          device: str | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train a network as configured; returns the path of ``RUN/model.pt``.

    ``resume`` continues from ``RUN/checkpoints/last_checkpoint_epoch=N.pt`` (weights, optimizer, scheduler and
    epoch counter), so a run killed mid-way ends where an uninterrupted one would.
    """
    run = Path(run)
    ctx = init_distributed(device or "auto")
    dev = resolve_device(device, ctx)
    fh = _setup_logging(run, ctx.is_main)
    t = cfg["training"]
    max_epochs = int(epochs or t["epochs"])
    cfg = {**cfg, "training": {**t, "epochs": max_epochs}}
    set_determinism(seed=int(t["seed"]) + ctx.rank)
    train_files, val_files = split_for_fold(manifest, fold)
    if not train_files:
        raise InputError(manifest, "has no training cases for this fold")
    for f in train_files + val_files:
        if not f.get("label"):
            raise InputError(manifest, f"case {f.get('case_id')} has no label")
    ckpt = latest_checkpoint(run) if resume else None
    if resume and ckpt is None:
        raise InputError(run, "nothing to resume: no checkpoints/last_checkpoint_epoch=*.pt")
    if not resume and ctx.is_main and latest_checkpoint(run) is not None:
        raise InputError(run, "already holds a training run", hint="use --resume to continue it or a new --out")
    if cfg["preprocessing"]["normalization"] == "nnunet" and not cfg["preprocessing"].get("intensity_stats"):
        stats = compute_intensity_stats(train_files)
        cfg["preprocessing"] = {**cfg["preprocessing"], "intensity_stats": stats}
        logger.info("foreground intensity statistics (HU): %s", stats)
    if ctx.is_main:
        dump_config(cfg, run / "config.yaml")
        logger.info("training on %d cases, validating on %d, device %s, world size %d", len(train_files),
                    len(val_files), dev, ctx.world_size)

    cache = t["cache"]
    train_ds = make_dataset(train_files, train_transforms(cfg), cache, run / "cache")
    sampler = torch.utils.data.distributed.DistributedSampler(train_ds, shuffle=True) if ctx.world_size > 1 else None
    train_loader = DataLoader(train_ds, batch_size=int(t["batch_size"]), shuffle=sampler is None, sampler=sampler,
                              num_workers=int(t["num_workers"]), drop_last=False)
    network = build_network(cfg["network"]).to(dev)
    if ctx.world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = build_optimizer(cfg, network.parameters())
    scheduler = build_scheduler(cfg, optimizer, max_epochs)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    n_classes = int(cfg["network"]["kwargs"].get("out_channels", 2))
    post = Compose([AsDiscreted(keys="pred", argmax=True, to_onehot=n_classes),
                    AsDiscreted(keys="label", to_onehot=n_classes)])
    evaluator = None
    use_amp = bool(t["amp"]) and dev.type == "cuda"
    cpu_bf16 = use_cpu_bf16(t.get("bf16", "auto"), dev)
    if cpu_bf16:
        logger.info("training with bf16 autocast on the CPU (float32 weights and loss)")
    if val_files:
        val_ds = make_dataset(val_files, val_transforms(cfg), cache, run / "cache")
        val_sampler = (torch.utils.data.distributed.DistributedSampler(val_ds, shuffle=False)
                       if ctx.world_size > 1 else None)
        val_loader = DataLoader(val_ds, batch_size=1, sampler=val_sampler, num_workers=int(t["num_workers"]))
        val_handlers = [StatsHandler(iteration_log=False, name="monai_pipeline.trainer")] if ctx.is_main else []
        if ctx.is_main:
            val_handlers.append(CheckpointSaver(save_dir=str(run / "checkpoints"), save_dict={"network": unwrap(network)},
                                                save_key_metric=True, key_metric_filename=BEST_NAME))
        evaluator = SupervisedEvaluator(
            device=dev, val_data_loader=val_loader, network=unwrap(network),
            inferer=AutocastInferer(build_inferer(cfg)) if cpu_bf16 else build_inferer(cfg),
            postprocessing=post,
            key_val_metric={"val_mean_dice": MeanDice(include_background=False,
                                                      output_transform=from_engine(["pred", "label"]))},
            val_handlers=val_handlers, amp=use_amp, decollate=True)
    train_handlers: list = []
    if scheduler is not None:
        train_handlers.append(LrScheduleHandler(lr_scheduler=scheduler, print_lr=False))
    if evaluator is not None:
        train_handlers.append(ValidationHandler(validator=evaluator, interval=int(t["val_interval"]), epoch_level=True,
                                                exec_at_start=False))
    save_dict = {"network": unwrap(network), "optimizer": optimizer}
    if scheduler is not None:
        save_dict["lr_scheduler"] = scheduler
    if ctx.is_main:
        train_handlers.append(StatsHandler(tag_name="train_loss", output_transform=from_engine(["loss"], first=True),
                                           iteration_log=False, name="monai_pipeline.trainer"))
        try:
            import tensorboard  # noqa: F401
            from monai.handlers import TensorBoardStatsHandler

            train_handlers.append(TensorBoardStatsHandler(log_dir=str(run / "tensorboard"), tag_name="train_loss",
                                                          output_transform=from_engine(["loss"], first=True)))
        except ImportError:
            logger.info("tensorboard not installed: no TensorBoard logs")
    trainer = SupervisedTrainer(
        device=dev, max_epochs=max_epochs, train_data_loader=train_loader, network=network, optimizer=optimizer,
        loss_function=loss, inferer=AutocastInferer(SimpleInferer()) if cpu_bf16 else SimpleInferer(), train_handlers=train_handlers, amp=use_amp, decollate=False)
    if ckpt is not None:
        load_dict = {**save_dict, "trainer": trainer}
        CheckpointLoader(load_path=str(ckpt), load_dict=load_dict, map_location=dev).attach(trainer)
        logger.info("resuming from %s", ckpt)
    if ctx.is_main:
        # the trainer's own state (epoch, iteration) is saved with the "last" checkpoint so resume continues the count
        CheckpointSaver(save_dir=str(run / "checkpoints"), save_dict={**save_dict, "trainer": trainer},
                        file_prefix=LAST_PREFIX, save_interval=1, n_saved=1, epoch_level=True).attach(trainer)
        CSVLogger(run / "log.csv", optimizer, evaluator).attach(trainer)
        if progress:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False).attach(trainer, output_transform=lambda out: {"loss": float(
                out[0]["loss"] if isinstance(out, list) else out["loss"])})
    if evaluator is not None and int(t.get("early_stopping_patience", 0)) > 0:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, EarlyStopHandler(
            patience=int(t["early_stopping_patience"]), score_function=stopping_fn_from_metric("val_mean_dice"),
            trainer=trainer, epoch_level=True))
    # with the deterministic part cached in memory, the random transforms need no metadata: plain tensors are
    # faster (MONAI's fast-training recipe). Restored afterwards, whatever happens.
    fast_meta = cache == "memory"
    if fast_meta:
        set_track_meta(False)
    try:
        trainer.run()
    finally:
        if fast_meta:
            set_track_meta(True)
    if ctx.world_size > 1:
        # DDP broadcasts buffers (BatchNorm statistics) from rank 0 at the start of each forward, and each rank
        # then updates its own: after the last step they differ. Broadcast once more, so that every rank holds
        # exactly the model rank 0 saves, and record a fingerprint per rank (diverged ranks are visible).
        for buf in unwrap(network).buffers():
            dist.broadcast(buf, src=0)
        _write_rank_record(run, ctx, network, int(trainer.state.epoch))
    model_path = run / "model.pt"
    if ctx.is_main:
        best = run / "checkpoints" / BEST_NAME
        extra = {"epochs_trained": int(trainer.state.epoch)}
        if best.exists():
            unwrap(network).load_state_dict(torch.load(best, map_location=dev, weights_only=True))
            extra["best_val_mean_dice"] = float(evaluator.state.best_metric) if evaluator else float("nan")
        save_model_file(model_path, network, cfg, extra)
        plot_training_curve(run)
        logger.info("model written to %s", model_path)
    if ctx.world_size > 1:
        dist.barrier()
        if ctx.owns_group:
            # an undestroyed gloo group is torn down by interpreter exit, which can abort the process
            # ("terminate called without an active exception") after a successful run
            dist.destroy_process_group()
    if fh is not None:
        for name in ("monai_pipeline", "ignite", "monai_pipeline.trainer"):
            logging.getLogger(name).removeHandler(fh)
        fh.close()
    return model_path
