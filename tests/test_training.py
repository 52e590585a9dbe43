"""Training really trains (loss falls on tiny volumes), writes a self-describing model, and resumes after a kill."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import torch
import yaml

from monai_pipeline.config import load_config
from monai_pipeline.training import latest_checkpoint, train
from tests.helpers import TINY_OVERLAY


def _losses(run):
    with open(run / "log.csv") as fh:
        return [float(r["train_loss"]) for r in csv.DictReader(fh)]


def test_loss_falls_and_model_file_is_self_describing(tiny_dataset, tmp_path):
    cfg = load_config(TINY_OVERLAY, {"training": {"epochs": 8, "val_interval": 4}})
    run = tmp_path / "run"
    model = train(tiny_dataset / "manifest.json", run, cfg, device="cpu", progress=False)
    losses = _losses(run)
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.9 * sum(losses[:2]) / 2, losses
    blob = torch.load(model, map_location="cpu", weights_only=True)
    assert blob["format"] == "monai-pipeline-model/1"
    assert blob["config"]["preprocessing"]["target_spacing"] == [1.2, 1.2, 2.0]
    assert blob["network"]["name"] == "UNet" and blob["labels"]["1"] == "nodule"
    assert {"monai", "torch", "monai_pipeline"} <= set(blob["versions"])
    for f in ("config.yaml", "train.log", "training_curve.png", "checkpoints/best_network.pt"):
        assert (run / f).exists(), f


def test_nnunet_normalisation_stats_stored(tiny_dataset, tmp_path):
    cfg = load_config(TINY_OVERLAY, {"training": {"epochs": 1, "val_interval": 1},
                                     "preprocessing": {"normalization": "nnunet"}})
    model = train(tiny_dataset / "manifest.json", tmp_path / "run", cfg, device="cpu", progress=False)
    stats = torch.load(model, weights_only=True)["config"]["preprocessing"]["intensity_stats"]
    assert stats["p00_5"] < stats["mean"] < stats["p99_5"] and stats["std"] > 0
    assert -900 < stats["mean"] < 100, "foreground of nodules in HU"


def test_kill_and_resume(tiny_dataset, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({**TINY_OVERLAY, "training": {**TINY_OVERLAY["training"], "val_interval": 50}}))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "monai_pipeline.cli", "train", "--manifest", str(tiny_dataset / "manifest.json"),
            "--out", str(run), "--config", str(cfg_path), "--epochs", "40", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        ck = latest_checkpoint(run)
        if ck is not None and int(ck.stem.split("=")[-1]) >= 3:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(latest_checkpoint(run).stem.split("=")[-1])
    assert 3 <= killed_at < 40 and not (run / "model.pt").exists()
    # without --resume the run folder is protected
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and "already holds a training run" in r.stderr
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["epochs_trained"] == 40
    assert "resuming from" in (run / "train.log").read_text()
    with open(run / "log.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs[-1] == 40 and min(e for e in epochs if e > killed_at) == killed_at + 1
