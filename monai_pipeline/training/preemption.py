"""Preemption: on SIGTERM or SIGUSR1 (SLURM's time limit or a preemption) every rank stops after the same step and
rank 0 writes a checkpoint that ``--resume`` continues from."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from monai_pipeline.io.writer import atomic_write_text
from monai_pipeline.training.checkpoints import write_last_checkpoint
from monai_pipeline.training.distributed import DistContext

logger = logging.getLogger(__name__)


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
    path = write_last_checkpoint(run, save_dict, trainer)
    atomic_write_text(run / PREEMPTED_MARKER, json.dumps({"iteration": int(trainer.state.iteration),
                                                          "epoch": int(trainer.state.epoch), "checkpoint": path.name}))
    return path
