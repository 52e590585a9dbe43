"""Training on 3D patches with ``monai.engines.SupervisedTrainer``/``SupervisedEvaluator`` and ignite handlers.

:func:`train` runs these steps: check the data and the run folder, build the datasets, the network and
optimiser, the evaluator, the trainer with its handlers, run, write the model file; its teardown (log
handlers, the process group it created) happens in ``finally``. ``RUN/`` receives: ``checkpoints/`` (last epoch, for ``--resume``; best by validation Dice), ``model.pt`` (the
self-describing model file), ``config.yaml`` (the merged configuration), ``log.csv`` (one row per epoch),
``train.log``, ``tensorboard/`` and ``training_curve.png``. Under ``torchrun`` the same code trains with
DistributedDataParallel (nccl on GPUs, gloo on CPUs); only rank 0 logs and writes files.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, set_track_meta
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import default_prepare_batch
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

from monai_pipeline.config import PipelineConfig, dump_config
from monai_pipeline.data.manifest import split_for_fold
from monai_pipeline.errors import InputError, Preempted
from monai_pipeline.inferers import AutocastInferer, build_sliding_window, use_cpu_bf16
from monai_pipeline.networks import build_network, save_model_file, training_data_card, unwrap
from monai_pipeline.transforms.pipeline import train_transforms, val_transforms

logger = logging.getLogger(__name__)
LAST_PREFIX = "last"
BEST_NAME = "best_network.pt"
BEST_RECORD = "best.json"


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


#: signals a scheduler sends before it stops a job (SLURM: --signal=..., preemption, time limit)
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_MARKER = "preempted.json"


class PreemptionHandler:
    """On SIGTERM or SIGUSR1, every rank finishes its current step; the ranks agree (an all-reduce per
    iteration under DDP, so all stop at the same step) and the trainer terminates. The caller then writes the
    checkpoint. Handlers are installed only in the main thread and restored by :meth:`restore`."""

    def __init__(self, ctx: DistContext, device: torch.device):
        self.ctx, self.device = ctx, device
        self.requested = False
        self.stopped = False
        self._previous: dict = {}

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def attach(self, trainer: SupervisedTrainer) -> None:
        """Attach after every other handler: at an epoch's end the stop waits for them (log row, checkpoint,
        LR step, validation), since ignite fires no EPOCH_COMPLETED for an epoch terminated on its last step."""
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._stop_at_epoch_end)

    def _check(self, engine) -> None:
        flag = self.requested
        if self.ctx.world_size > 1:  # every rank calls this once per iteration: the collective stays in step
            t = torch.tensor([1 if flag else 0], dtype=torch.int32,
                             device=self.device if self.ctx.backend == "nccl" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        if not flag:
            return
        self.stopped = True
        if engine.state.iteration % engine.state.epoch_length == 0:
            return  # the epoch's last step: stop once its EPOCH_COMPLETED handlers have run
        logger.warning("preemption signal: stopping after iteration %d (epoch %d)", engine.state.iteration,
                       engine.state.epoch)
        engine.terminate()

    def _stop_at_epoch_end(self, engine) -> None:
        if self.stopped and not engine.should_terminate:
            logger.warning("preemption signal: stopping at the end of epoch %d", engine.state.epoch)
            engine.terminate()


def save_preemption_checkpoint(run: Path, save_dict: dict, trainer: SupervisedTrainer) -> Path:
    """The mid-epoch state (weights, optimiser, scheduler, the trainer's iteration) as the run's "last" checkpoint,
    written atomically; ``--resume`` finishes the interrupted epoch from the next iteration."""
    from monai_pipeline.io.writer import atomic_path, atomic_write_text

    path = run / "checkpoints" / f"{LAST_PREFIX}_checkpoint_epoch={trainer.state.epoch}.pt"
    with atomic_path(path) as tmp:
        torch.save({k: v.state_dict() for k, v in {**save_dict, "trainer": trainer}.items()}, tmp)
    atomic_write_text(run / PREEMPTED_MARKER, json.dumps({"iteration": int(trainer.state.iteration),
                                                          "epoch": int(trainer.state.epoch), "checkpoint": path.name}))
    return path


def init_distributed(device: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl on CUDA with a GPU per process,
    gloo on CPU and when more processes than GPUs share a node (nccl refuses two ranks on one GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    backend = "nccl" if cuda and torch.cuda.device_count() >= per_node else "gloo"
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
        device = f"cuda:{ctx.local_rank % torch.cuda.device_count()}"  # ranks share GPUs when there are fewer
    return torch.device(device)


#: the keys of a manifest entry that reach the transforms; the others (orientation, source, background, fold,
#: ...) describe the case and differ between kinds of case, which batch collation would refuse
DATA_KEYS = ("image", "label", "case_id")
#: with ``training.label_mode`` soft or any-reader the label is the reader-count map of ``lidc-convert --per-reader``
#: (``label_readers``: how many readers marked each voxel) and ``n_readers`` the readers of the scan
READER_KEYS = ("n_readers",)


def data_keys(label_mode: str) -> tuple[str, ...]:
    """The entry keys the training transforms receive for ``label_mode``."""
    return DATA_KEYS if label_mode == "consensus" else DATA_KEYS + READER_KEYS


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


def training_labels(files: list[dict], label_mode: str, manifest: str | Path) -> list[dict]:
    """The training entries with the label of ``label_mode``: consensus keeps the manifest's ``label``; soft and
    any-reader train on ``label_readers`` (reader counts) and need ``n_readers`` (refused, naming the case and
    the fix, when a case lacks them)."""
    if label_mode == "consensus":
        return files
    out = []
    for f in files:
        if not f.get("label_readers") or not f.get("n_readers"):
            raise InputError(manifest, f"case {f.get('case_id')}: training.label_mode {label_mode} needs the readers' "
                             "labels (label_readers, n_readers) in the manifest",
                             hint="convert the LIDC data with lidc-convert --per-reader")
        out.append({**f, "label": f["label_readers"]})
    return out


class ReaderAgreementBatch:
    """``prepare_batch`` of the trainer for ``label_mode`` soft and any-reader: the batch's label holds reader
    counts (B, 1, x, y, z); any-reader trains on count > 0, soft on the two-channel target
    (1 - p, p) with p = count / n_readers, the fraction of the scan's readers marking the voxel (DiceCE with
    probability targets: MONAI's soft Dice and torch's cross-entropy with class probabilities)."""

    def __init__(self, label_mode: str):
        if label_mode not in ("soft", "any-reader"):
            raise ValueError(f"label_mode must be soft or any-reader here, got {label_mode!r}")
        self.label_mode = label_mode

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if self.label_mode == "any-reader":
            return image, (label > 0).to(label.dtype)
        n = torch.as_tensor(batchdata["n_readers"]).to(label.device, torch.float32).clamp(min=1)
        p = (label.float() / n.view(-1, *([1] * (label.ndim - 1)))).clamp(0.0, 1.0)
        return image, torch.cat([1.0 - p, p], dim=1)


def build_loss(cfg: PipelineConfig) -> DiceCELoss:
    """DiceCE on the softmax: against the one-hot label (consensus, any-reader) or the two-channel probability
    target of ``label_mode`` soft. ``train`` and the bundle's ``train.json`` both use it."""
    return DiceCELoss(to_onehot_y=cfg.training.label_mode != "soft", softmax=True)


def build_prepare_batch(cfg: PipelineConfig):
    """The trainer's ``prepare_batch``: MONAI's default, or :class:`ReaderAgreementBatch` for soft/any-reader."""
    mode = cfg.training.label_mode
    return default_prepare_batch if mode == "consensus" else ReaderAgreementBatch(mode)


def bundle_training_files(datalist: str | Path, cfg: PipelineConfig, base_dir: str | Path | None = None) -> list[dict]:
    """The bundle's training entries: the datalist's training section (paths resolved from ``base_dir``, default
    the datalist's folder) with the
    label of ``training.label_mode`` (:func:`training_labels`) and only the keys the transforms need, as
    ``train`` builds them."""
    from monai_pipeline.data.manifest import load_manifest

    mode = cfg.training.label_mode
    files = training_labels(load_manifest(datalist, "training", base_dir=base_dir), mode, datalist)
    return [{k: f[k] for k in data_keys(mode) if k in f} for f in files]


def compute_intensity_stats(files: list[dict]) -> dict[str, float]:
    """Foreground HU statistics of the training images (nnU-Net fingerprint), read once with SimpleITK."""
    from monai_pipeline.io.geometry import sitk_to_xyz_array
    from monai_pipeline.io.reader import read_ct, read_label
    from monai_pipeline.transforms.array import foreground_intensity_stats

    imgs, labs = [], []
    for f in files:
        imgs.append(sitk_to_xyz_array(read_ct(f["image"]).image))
        labs.append(sitk_to_xyz_array(read_label(f["label"]).image))
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
        out = engine.state.output[0] if isinstance(engine.state.output, list) else engine.state.output
        self._losses.append(float(out["loss"].detach()) if isinstance(out["loss"], torch.Tensor) else float(out["loss"]))

    def _epoch(self, engine) -> None:
        val = ""
        if self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch:
            val = f"{self.evaluator.state.metrics.get('val_mean_dice', float('nan')):.5f}"
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if not self.path.exists():
            w.writerow(self.FIELDS)
        w.writerow([engine.state.epoch, f"{np.mean(self._losses):.5f}", f"{self.optimizer.param_groups[0]['lr']:.6g}",
                    val, f"{time.time() - self._t0:.1f}"])
        with open(self.path, "a") as fh:  # one write: a kill leaves the row whole or absent
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())


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


def checkpoint_epoch(path: str | Path) -> int:
    """The epoch of a ``last_checkpoint_epoch=N.pt`` file."""
    return int(re.search(r"epoch=(\d+)", str(path)).group(1))


def reconcile_log(log: Path, epoch: int) -> None:
    """Drop ``log.csv`` rows beyond ``epoch`` (written before a kill, after the last checkpoint): the resumed
    run trains and logs those epochs again."""
    if not log.is_file():
        return
    from monai_pipeline.io.writer import atomic_write_text

    lines = log.read_text().splitlines(keepends=True)

    def kept(line: str) -> bool:  # a complete row of an epoch up to the checkpoint's
        head = line.split(",", 1)[0]
        return line.endswith("\n") and head.isdigit() and int(head) <= epoch

    keep = lines[:1] + [ln for ln in lines[1:] if kept(ln)]
    if len(keep) != len(lines):
        logger.info("log.csv: dropped %d row(s) beyond the checkpoint's epoch %d", len(lines) - len(keep), epoch)
        atomic_write_text(log, "".join(keep))


def latest_checkpoint(run: str | Path) -> Path | None:
    """The most recent complete ``checkpoints/last_checkpoint_epoch=N.pt`` of a run, or None.

    MONAI's ``CheckpointSaver`` writes in place (not atomically), so a kill while it writes leaves a truncated
    file; torch's zip format ends with its central directory, so such a file is no zip file and is skipped (with
    a warning) for the previous checkpoint, which the saver deletes only after the new one is written."""
    import zipfile

    cands = glob.glob(str(Path(run) / "checkpoints" / f"{LAST_PREFIX}_checkpoint_epoch=*.pt"))
    for p in sorted(cands, key=lambda p: int(re.search(r"epoch=(\d+)", p).group(1)), reverse=True):
        if zipfile.is_zipfile(p):
            return Path(p)
        logger.warning("%s is incomplete (the run was stopped while writing it); using an earlier checkpoint", p)
    return None


TRAIN_LOGGERS = ("monai_pipeline", "ignite")  # "monai_pipeline.trainer" propagates into the first


def _setup_logging(run: Path, is_main: bool) -> logging.Handler | None:
    """``RUN/train.log`` on rank 0; each message reaches it once (handlers only on top-level loggers)."""
    if not is_main:
        return None
    run.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(run / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in TRAIN_LOGGERS:
        logging.getLogger(name).addHandler(fh)
        logging.getLogger(name).setLevel(logging.INFO)
    return fh


def _teardown_logging(fh: logging.Handler | None) -> None:
    if fh is None:
        return
    for name in TRAIN_LOGGERS:
        logging.getLogger(name).removeHandler(fh)
    fh.close()


def tensorboard_handlers(log_dir: str | Path, tag_name: str = "train_loss") -> list:
    """``[TensorBoardStatsHandler]`` when tensorboard is installed (an optional extra), else ``[]``."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        logger.info("tensorboard is not installed: no TensorBoard logs")
        return []
    from monai.handlers import TensorBoardStatsHandler, from_engine

    return [TensorBoardStatsHandler(log_dir=str(log_dir), tag_name=tag_name,
                                    output_transform=from_engine(["loss"], first=True))]


def build_optimizer(cfg: PipelineConfig, params) -> torch.optim.Optimizer:
    t = cfg.training
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.99, nesterov=True, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def build_scheduler(cfg: PipelineConfig, optimizer, epochs: int):
    s = cfg.training.scheduler
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=cfg.training.lr * 0.01)
    if s == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs, power=0.9)
    return None


def check_training_data(manifest: str | Path, fold: int | None, n_classes: int) -> tuple[list[dict], list[dict]]:
    """(training, validation) entries of the fold; every case must have a label, and the dataset check
    (:func:`~monai_pipeline.data.check.check_dataset`: files, grids, label values, splits) must find no error."""
    from monai_pipeline.data.check import check_dataset

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
        logger.info("check: %d case(s) have an empty label: %s", len(report.empty_labels), ", ".join(report.empty_labels))
    if report.errors:
        first = report.errors[0]
        raise InputError(manifest, f"{len(report.errors)} dataset problem(s), first: {first.case_id}: {first.message}",
                         hint=f"monai-pipeline check --manifest {manifest} lists them all")
    return train_files, val_files


def check_run_folder(run: Path, resume: bool, is_main: bool) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); refuses to train over an existing run."""
    ckpt = latest_checkpoint(run) if resume else None
    if resume and ckpt is None:
        raise InputError(run, "nothing to resume: no checkpoints/last_checkpoint_epoch=*.pt")
    if not resume and is_main and latest_checkpoint(run) is not None:
        raise InputError(run, "already holds a training run", hint="use --resume to continue it or a new --out")
    return ckpt


def with_intensity_stats(cfg: PipelineConfig, train_files: list[dict]) -> PipelineConfig:
    """nnU-Net normalisation needs the training set's foreground HU statistics: computed once, stored in cfg."""
    if cfg.preprocessing.normalization != "nnunet" or cfg.preprocessing.intensity_stats:
        return cfg
    stats = compute_intensity_stats(train_files)
    logger.info("foreground intensity statistics (HU): %s", stats)
    return cfg.merged({"preprocessing": {"intensity_stats": stats}})


def build_evaluator(cfg: PipelineConfig, run: Path, val_files: list[dict], network, dev: torch.device,
                    ctx: DistContext, cpu_bf16: bool) -> SupervisedEvaluator | None:
    """Validation in network space (sliding window, Dice per case); rank 0 keeps the best checkpoint."""
    if not val_files:
        return None
    t = cfg.training
    val_ds = make_dataset(val_files, val_transforms(cfg), t.cache, run / "cache")
    val_sampler = torch.utils.data.distributed.DistributedSampler(val_ds, shuffle=False) if ctx.world_size > 1 else None
    val_loader = DataLoader(val_ds, batch_size=1, sampler=val_sampler, num_workers=t.num_workers)
    handlers: list = []
    if ctx.is_main:
        handlers = [StatsHandler(iteration_log=False, name="monai_pipeline.trainer"), BestCheckpoint(run, network)]
    n_classes = cfg.network.out_channels
    post = Compose([AsDiscreted(keys="pred", argmax=True, to_onehot=n_classes),
                    AsDiscreted(keys="label", to_onehot=n_classes)])
    window = build_sliding_window(cfg)
    return SupervisedEvaluator(
        device=dev, val_data_loader=val_loader, network=unwrap(network),
        inferer=AutocastInferer(window) if cpu_bf16 else window, postprocessing=post,
        key_val_metric={"val_mean_dice": MeanDice(include_background=False,
                                                  output_transform=from_engine(["pred", "label"]))},
        val_handlers=handlers, amp=bool(t.amp) and dev.type == "cuda", decollate=True)


def build_trainer(cfg: PipelineConfig, run: Path, train_files: list[dict], network, optimizer, scheduler,
                  evaluator: SupervisedEvaluator | None, dev: torch.device, ctx: DistContext, cpu_bf16: bool,
                  max_epochs: int) -> SupervisedTrainer:
    """``SupervisedTrainer`` on random patches with DiceCE, the LR schedule and periodic validation."""
    t = cfg.training
    train_ds = make_dataset(train_files, train_transforms(cfg), t.cache, run / "cache", keys=data_keys(t.label_mode))
    sampler = torch.utils.data.distributed.DistributedSampler(train_ds, shuffle=True) if ctx.world_size > 1 else None
    train_loader = DataLoader(train_ds, batch_size=t.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=t.num_workers, drop_last=False)
    handlers: list = []
    if scheduler is not None:
        handlers.append(LrScheduleHandler(lr_scheduler=scheduler, print_lr=False))
    if evaluator is not None:
        handlers.append(ValidationHandler(validator=evaluator, interval=t.val_interval, epoch_level=True,
                                          exec_at_start=False))
    if ctx.is_main:
        handlers.append(StatsHandler(tag_name="train_loss", output_transform=from_engine(["loss"], first=True),
                                     iteration_log=False, name="monai_pipeline.trainer"))
        handlers += tensorboard_handlers(run / "tensorboard")
    return SupervisedTrainer(
        device=dev, max_epochs=max_epochs, train_data_loader=train_loader, network=network, optimizer=optimizer,
        loss_function=build_loss(cfg), prepare_batch=build_prepare_batch(cfg),
        inferer=AutocastInferer(SimpleInferer()) if cpu_bf16 else SimpleInferer(), train_handlers=handlers,
        amp=bool(t.amp) and dev.type == "cuda", decollate=False)


def attach_checkpointing(trainer: SupervisedTrainer, run: Path, save_dict: dict, ckpt: Path | None,
                         dev: torch.device, ctx: DistContext, evaluator, optimizer, progress: bool,
                         early_stopping_patience: int) -> None:
    """Resume from ``ckpt``; on rank 0 the per-epoch "last" checkpoint (with the trainer's epoch counter),
    ``log.csv`` and the progress bar; early stopping on the validation Dice when configured."""
    if ckpt is not None:
        CheckpointLoader(load_path=str(ckpt), load_dict={**save_dict, "trainer": trainer}, map_location=dev).attach(trainer)
        logger.info("resuming from %s", ckpt)
        if ctx.is_main:
            reconcile_log(run / "log.csv", checkpoint_epoch(ckpt))
    if ctx.is_main:
        # the epoch's log row first, then its checkpoint: a kill between the two leaves a row beyond the
        # checkpoint, which resume drops and logs again (every epoch counted once)
        CSVLogger(run / "log.csv", optimizer, evaluator).attach(trainer)
        CheckpointSaver(save_dir=str(run / "checkpoints"), save_dict={**save_dict, "trainer": trainer},
                        file_prefix=LAST_PREFIX, save_interval=1, n_saved=1, epoch_level=True).attach(trainer)
        if progress:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False).attach(trainer, output_transform=lambda out: {"loss": float(
                out[0]["loss"] if isinstance(out, list) else out["loss"])})
    if evaluator is not None and early_stopping_patience > 0:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, EarlyStopHandler(
            patience=early_stopping_patience, score_function=stopping_fn_from_metric("val_mean_dice"),
            trainer=trainer, epoch_level=True))


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


def sync_ranks(network, run: Path, ctx: DistContext, epochs: int) -> None:
    """DDP broadcasts buffers (BatchNorm statistics) from rank 0 at each forward and each rank then updates its
    own: after the last step they differ. Broadcast once more so every rank holds the model rank 0 saves, and
    record a fingerprint per rank (diverged ranks are visible)."""
    for buf in unwrap(network).buffers():
        dist.broadcast(buf, src=0)
    _write_rank_record(run, ctx, network, epochs)


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
        from monai_pipeline.io.writer import atomic_path, atomic_write_text

        score = float(evaluator.state.metrics[self.metric])
        previous = self.best()
        if previous is not None and not score > float(previous["score"]):
            return
        with atomic_path(self.path) as tmp:
            torch.save(unwrap(self.network).state_dict(), tmp)
        atomic_write_text(self.record, json.dumps({"score": score, "epoch": int(evaluator.state.epoch),
                                                   "metric": self.metric}))
        logger.info("best %s so far: %.4f at epoch %d", self.metric, score, evaluator.state.epoch)


def save_final_model(run: Path, network, cfg: PipelineConfig, evaluator, epochs: int, dev: torch.device,
                     train_files: list[dict], val_files: list[dict]) -> Path:
    """``RUN/model.pt``: the best validation checkpoint when there is one, else the last weights; records the
    case ids trained on (``evaluate`` refuses to score them) and those used for model selection."""
    best = run / "checkpoints" / BEST_NAME
    extra = {"epochs_trained": epochs, "trained_on": sorted(f["case_id"] for f in train_files),
             "validated_on": sorted(f["case_id"] for f in val_files),
             "training_data": training_data_card(train_files)}
    if best.exists():
        unwrap(network).load_state_dict(torch.load(best, map_location=dev, weights_only=True))
        record = BestCheckpoint(run, network).best()
        extra["best_val_mean_dice"] = float(record["score"]) if record else None
        extra["best_epoch"] = int(record["epoch"]) if record else None
    path = save_model_file(run / "model.pt", network, cfg, extra)
    plot_training_curve(run)
    logger.info("model written to %s", path)
    return path


def train(manifest: str | Path, run: str | Path, cfg: PipelineConfig, fold: int | None = None,
          epochs: int | None = None, device: str | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train a network as configured; returns the path of ``RUN/model.pt``.

    ``resume`` continues from ``RUN/checkpoints/last_checkpoint_epoch=N.pt`` (weights, optimizer, scheduler and
    epoch counter), so a run killed mid-way ends where an uninterrupted one would.
    """
    run = Path(run)
    ctx = init_distributed(device or "auto")
    fh = None
    preemption: PreemptionHandler | None = None
    try:
        dev = resolve_device(device, ctx)
        max_epochs = int(epochs or cfg.training.epochs)
        cfg = cfg.merged({"training": {"epochs": max_epochs}})
        set_determinism(seed=cfg.training.seed + ctx.rank)
        # everything is checked before the run folder or its log is created
        train_files, val_files = check_training_data(manifest, fold, cfg.network.out_channels)
        if cfg.training.label_mode == "soft" and cfg.network.out_channels != 2:
            raise InputError(manifest, "training.label_mode soft needs a two-class network (out_channels 2)")
        train_files = training_labels(train_files, cfg.training.label_mode, manifest)
        ckpt = check_run_folder(run, resume, ctx.is_main)
        fh = _setup_logging(run, ctx.is_main)
        cfg = with_intensity_stats(cfg, train_files)
        if ctx.is_main:
            dump_config(cfg, run / "config.yaml")
            logger.info("training on %d cases, validating on %d, device %s, world size %d", len(train_files),
                        len(val_files), dev, ctx.world_size)
        network = build_network(cfg.network).to(dev)
        if ctx.world_size > 1:
            network = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[dev.index] if dev.type == "cuda" else None)
        optimizer = build_optimizer(cfg, network.parameters())
        scheduler = build_scheduler(cfg, optimizer, max_epochs)
        cpu_bf16 = use_cpu_bf16(cfg.training.bf16, dev)
        if cpu_bf16:
            logger.info("training with bf16 autocast on the CPU (float32 weights and loss)")
        evaluator = build_evaluator(cfg, run, val_files, network, dev, ctx, cpu_bf16)
        trainer = build_trainer(cfg, run, train_files, network, optimizer, scheduler, evaluator, dev, ctx, cpu_bf16,
                                max_epochs)
        save_dict = {"network": unwrap(network), "optimizer": optimizer}
        if scheduler is not None:
            save_dict["lr_scheduler"] = scheduler
        attach_checkpointing(trainer, run, save_dict, ckpt, dev, ctx, evaluator, optimizer, progress,
                             cfg.training.early_stopping_patience)
        if ctx.is_main:
            (run / PREEMPTED_MARKER).unlink(missing_ok=True)  # this run may end normally
        preemption = PreemptionHandler(ctx, dev)
        preemption.attach(trainer)
        preemption.install()
        run_trainer(trainer, cfg.training.cache)
        finished = trainer.state.iteration >= max_epochs * (trainer.state.epoch_length or 1)
        if preemption.stopped and not finished:
            if ctx.is_main:
                path = save_preemption_checkpoint(run, save_dict, trainer)
                logger.warning("preempted: checkpoint %s written; resubmit with --resume", path)
            if ctx.world_size > 1:
                dist.barrier()
            raise Preempted(f"{run}: training preempted at epoch {trainer.state.epoch}, iteration "
                            f"{trainer.state.iteration}; checkpoint written, rerun with --resume to continue")
        if ctx.world_size > 1:
            sync_ranks(network, run, ctx, int(trainer.state.epoch))
        model_path = run / "model.pt"
        if ctx.is_main:
            save_final_model(run, network, cfg, evaluator, int(trainer.state.epoch), dev, train_files, val_files)
        if ctx.world_size > 1:
            dist.barrier()
        return model_path
    finally:
        if preemption is not None:
            preemption.restore()
        if ctx.world_size > 1 and ctx.owns_group and dist.is_initialized():
            # an undestroyed gloo group is torn down by interpreter exit, which can abort the process
            # ("terminate called without an active exception") after a successful run
            dist.destroy_process_group()
        _teardown_logging(fh)
