"""``monai-pipeline plan``: fingerprint a manifest (or read a fingerprint), plan, and write the overlay."""

from __future__ import annotations

import logging
from pathlib import Path

from monai_pipeline import __version__
from monai_pipeline.errors import InputError
from monai_pipeline.io.writer import atomic_write_text
from monai_pipeline.planning.fingerprint import dataset_fingerprint, read_fingerprint
from monai_pipeline.planning.planner import Plan, plan

logger = logging.getLogger(__name__)


def default_memory_gb(device: str) -> float:
    """Memory for training when none is given: 85 % of the GPU's on CUDA, else half the free RAM (at most 8 GiB)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(None, "no CUDA GPU here to size the plan by", hint="give --memory-gb")
        index = int(device.split(":")[1]) if ":" in device else 0
        return 0.85 * torch.cuda.get_device_properties(index).total_memory / 2**30
    from monai_pipeline.environment import memory_gib

    available = memory_gib()[1] or 8.0
    return min(8.0, 0.5 * float(available))


def plan_dataset(out: str | Path, manifest: str | Path | None = None, fingerprint: str | Path | None = None,
                 device: str = "cpu", memory_gb: float | None = None, time_budget_min: float | None = None,
                 epochs: int | None = None, step_seconds: float | None = None, cache: bool = True) -> Plan:
    """Plan from ``manifest`` (its fingerprint computed or read from the cache) or a ``fingerprint`` file, and
    write the overlay with its reasons to ``out``."""
    if (manifest is None) == (fingerprint is None):
        raise InputError(None, "give a manifest or a fingerprint, not both")
    if epochs is None and time_budget_min is None:
        raise InputError(None, "give --time-budget-min (epochs from a measured step time) or --epochs")
    if epochs is None and step_seconds is None and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(None, "measuring a training step on cuda needs a CUDA GPU here",
                             hint="give --step-seconds (measured on the training machine) or --epochs")
    fp = dataset_fingerprint(manifest, cache=cache, progress=True) if manifest else read_fingerprint(fingerprint)
    memory = memory_gb if memory_gb is not None else default_memory_gb(device)
    result = plan(fp, device=device, memory_gb=memory, time_budget_min=time_budget_min, epochs=epochs,
                  step_seconds=step_seconds)
    s = fp["summary"]
    result.header = [
        f"made by monai-pipeline {__version__} plan from {manifest or fingerprint}",
        f"dataset: {s['n_cases']} training cases, {s['lesions']['n']} lesions; device {device}, "
        f"{memory:.1f} GiB for training" + (f", budget {time_budget_min:g} min" if time_budget_min else ""),
        "use: monai-pipeline train --config THIS_FILE ... (an overlay on the default configuration)",
    ]
    atomic_write_text(out, result.to_yaml())
    return result
