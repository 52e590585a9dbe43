"""The context every builder of one training run shares (instead of ten parameters each)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from monai_pipeline.config import PipelineConfig
from monai_pipeline.training.distributed import DistContext


@dataclass(frozen=True)
class RunContext:
    """What every builder of one training run shares.

    Attributes:
        cfg: the run's configuration (epochs resolved, intensity statistics computed).
        run: the run folder.
        device: where the network trains.
        dist: this process's place in a torchrun job (rank 0 alone writes files).
        cpu_bf16: bf16 autocast on the CPU (float32 weights and loss).
        max_epochs: epochs of the whole run (a resumed run continues to it).
        progress: show a progress bar (rank 0).
    """

    cfg: PipelineConfig
    run: Path
    device: torch.device
    dist: DistContext
    cpu_bf16: bool
    max_epochs: int
    progress: bool = True
