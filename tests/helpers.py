"""Test helpers: tiny configs and model files, CLI runner."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

TINY_NET = {"name": "UNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32],
                                       "strides": [2, 2], "num_res_units": 1, "norm": "batch"}}
TINY_OVERLAY = {
    "network": TINY_NET,
    "patch": {"size": [32, 32, 24], "num_samples": 2},
    # no operating point: the tests' few validation scans would make the threshold noise (tests/training covers it)
    "training": {"epochs": 6, "batch_size": 2, "val_interval": 2, "cache": "memory", "lr": 0.003,
                 "operating_fp_per_scan": 0.0},
    "inference": {"roi_size": [48, 48, 32], "overlap": 0.25, "sw_batch_size": 2, "bf16": False},
    "preprocessing": {"target_spacing": [1.2, 1.2, 2.0]},
    # the tests' 96-voxel phantoms cut through the body, so mostly no lungs are found in them: keep candidates
    # there (the default empties such a scan's mask; tests/postprocess covers that)
    "postprocess": {"steps": {"lung_filter": {"keep_without_lungs": True}}},
}


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "monai_pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, env=e, timeout=timeout)


def tiny_model_file(path: Path, overlay: dict | None = None) -> Path:
    """An untrained, tiny model file (enough for geometry and batch-mechanics tests)."""
    from monai_pipeline.config import load_config
    from monai_pipeline.model_file import save_model_file
    from monai_pipeline.networks import build_network

    cfg = load_config(TINY_OVERLAY, overlay)
    return save_model_file(path, build_network(cfg.network), cfg)


def wait_for_checkpoint(run: Path, min_epoch: int, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Poll until ``run`` holds a "last" checkpoint of epoch >= ``min_epoch``, ``proc`` ended, or ``timeout`` s."""
    import time

    from monai_pipeline.training import checkpoint_epoch, latest_checkpoint

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        ck = latest_checkpoint(run)
        if ck is not None and checkpoint_epoch(ck) >= min_epoch:
            return
        time.sleep(0.05)


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines of dicom3tools' IOD validator on the DICOM file ``path`` (the test is skipped, naming the
    install command, where ``dciodvfy`` is missing)."""
    import shutil

    import pytest

    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy missing: apt-get install dicom3tools")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
