"""What a run shows and keeps: ``log.csv`` (one row per epoch), ``train.log``, TensorBoard logs and
``training_curve.png``."""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import TensorBoardStatsHandler, from_engine

from monai_pipeline.io.writer import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)


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
        self._losses.append(float(out["loss"].detach()) if isinstance(out["loss"],
                                                                      torch.Tensor) else float(out["loss"]))

    def _epoch(self, engine) -> None:
        val = ""
        if self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch:
            val = f"{self.evaluator.state.metrics.get('val_mean_dice', float('nan')):.5f}"
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
    import matplotlib  # deferred: matplotlib costs 0.4 s and only the end of a run draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def reconcile_log(log: Path, epoch: int) -> None:
    """Drop ``log.csv`` rows beyond ``epoch`` (written before a kill, after the last checkpoint): the resumed
    run trains and logs those epochs again."""
    if not log.is_file():
        return
    lines = log.read_text().splitlines(keepends=True)

    def kept(line: str) -> bool:  # a complete row of an epoch up to the checkpoint's
        head = line.split(",", 1)[0]
        return line.endswith("\n") and head.isdigit() and int(head) <= epoch

    keep = lines[:1] + [ln for ln in lines[1:] if kept(ln)]
    if len(keep) != len(lines):
        logger.info("log.csv: dropped %d row(s) beyond the checkpoint's epoch %d", len(lines) - len(keep), epoch)
        atomic_write_text(log, "".join(keep))


TRAIN_LOGGERS = ("monai_pipeline", "ignite")  # "monai_pipeline.trainer" propagates into the first


def setup_run_logging(run: Path, is_main: bool) -> logging.Handler | None:
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


def teardown_run_logging(fh: logging.Handler | None) -> None:
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

    return [TensorBoardStatsHandler(log_dir=str(log_dir), tag_name=tag_name,
                                    output_transform=from_engine(["loss"], first=True))]
