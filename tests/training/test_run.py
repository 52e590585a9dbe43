"""Training really trains (loss falls on tiny volumes), writes a self-describing model, and resumes after a kill."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from monai_pipeline.config import load_config
from monai_pipeline.training import checkpoint_epoch, latest_checkpoint, train
from tests.helpers import TINY_OVERLAY, wait_for_checkpoint

pytestmark = pytest.mark.slow  # trains tiny networks and kills training processes


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


def test_killed_at_random_moments_and_resumed_each_time(tiny_dataset, tmp_path):
    """SIGKILL at three random moments in a row (start-up, mid-epoch, between a log row and its checkpoint, ...),
    resuming each time: the run ends at the configured epoch count with every epoch logged exactly once and a
    model file that loads."""
    import random

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({**TINY_OVERLAY, "training": {**TINY_OVERLAY["training"], "val_interval": 50}}))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "monai_pipeline.cli", "train", "--manifest", str(tiny_dataset / "manifest.json"),
            "--out", str(run), "--config", str(cfg_path), "--epochs", "30", "--device", "cpu", "--no-progress"]
    rng = random.Random(1234)
    kills = 0
    for attempt in range(5):  # three kills, or fewer when a loaded machine lets an attempt outrun its kill
        if kills == 3 or (run / "model.pt").exists():
            break
        resume = ["--resume"] if latest_checkpoint(run) is not None else []
        start_epoch = checkpoint_epoch(latest_checkpoint(run)) if resume else 0
        err = tmp_path / f"attempt{attempt}.err"
        with open(err, "w") as fh:
            proc = subprocess.Popen([*args, *resume], stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True)
            # wait until this attempt has trained at least one epoch of its own, then a random extra moment
            wait_for_checkpoint(run, start_epoch + 1, proc)
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), f"attempt {attempt} failed: {err.read_text()[-2000:]}"
    assert kills >= 2 and not (run / "model.pt").exists(), "killed part-way, more than once"
    # without --resume the run folder is protected
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and "already holds a training run" in r.stderr
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["epochs_trained"] == 30
    log_text = (run / "train.log").read_text()
    assert "resuming from" in log_text
    assert log_text.count("model written to") == 1, "train.log receives each message once"
    with open(run / "log.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs == list(range(1, 31)), "every epoch logged once, none missing"
    from monai_pipeline.model_file import load_model_file

    load_model_file(run / "model.pt")


@pytest.mark.parametrize("signal_at,completed_before_stop", [(7, [1]), (10, [1, 2])])
def test_preemption_handler_mid_epoch_and_at_epoch_end(signal_at, completed_before_stop):
    """Signal mid-epoch (iteration 7 of epochs of 5): stop after that iteration, the partial epoch not completed
    (resume finishes it). Signal on an epoch's last iteration (10): the epoch's EPOCH_COMPLETED handlers still run
    (log row, checkpoint, LR step). Either way every epoch completes exactly once across the resume."""
    from ignite.engine import Engine, Events

    from monai_pipeline.training import DistContext, PreemptionHandler

    engine = Engine(lambda e, b: None)
    done: list[int] = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: done.append(e.state.epoch))  # e.g. the log row
    handler = PreemptionHandler(DistContext(), torch.device("cpu"))
    engine.add_event_handler(Events.ITERATION_STARTED,
                             lambda e: setattr(handler, "requested", e.state.iteration >= signal_at))
    handler.attach(engine)
    engine.run(range(5), max_epochs=4)
    assert handler.stopped and engine.state.iteration == signal_at and done == completed_before_stop
    resumed = Engine(lambda e, b: None)
    resumed.add_event_handler(Events.EPOCH_COMPLETED, lambda e: done.append(e.state.epoch))
    resumed.load_state_dict(engine.state_dict())
    resumed.run(range(5), max_epochs=4)
    assert done == [1, 2, 3, 4], "every epoch completed exactly once across the preemption"


def test_best_checkpoint_survives_a_resume(tiny_dataset, tmp_path):
    """After a resume, a validation that is not better than the best of the whole run (kept in best.json) must not
    replace best_network.pt; model.pt records the run's best score and its epoch."""
    import json

    cfg = load_config(TINY_OVERLAY, {"training": {"epochs": 2, "val_interval": 1, "keep": "best"}})
    run = tmp_path / "run"
    train(tiny_dataset / "manifest.json", run, cfg, device="cpu", progress=False)
    record = json.loads((run / "checkpoints" / "best.json").read_text())
    assert 0.0 <= record["score"] <= 1.0 and record["epoch"] in (1, 2)
    (run / "checkpoints" / "best.json").write_text(json.dumps({**record, "score": 0.999}))  # an unbeatable best
    before = (run / "checkpoints" / "best_network.pt").read_bytes()
    train(tiny_dataset / "manifest.json", run, cfg, epochs=4, device="cpu", resume=True, progress=False)
    assert (run / "checkpoints" / "best_network.pt").read_bytes() == before
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["best_val_mean_dice"] == 0.999 and blob["best_epoch"] == record["epoch"] and blob["epochs_trained"] == 4
    assert blob["weights"] == "best"
    best = torch.load(run / "checkpoints" / "best_network.pt", weights_only=True)
    assert all(torch.equal(blob["state_dict"][k], v) for k, v in best.items())


def test_model_file_holds_the_final_weights_by_default(tiny_dataset, tmp_path):
    """``training.keep: final`` (the default): model.pt holds the network as the last epoch left it, the same
    tensors as the last checkpoint, whatever the validations scored; the best checkpoint is still kept beside."""
    cfg = load_config(TINY_OVERLAY, {"training": {"epochs": 3, "val_interval": 1}})
    run = tmp_path / "run"
    model = train(tiny_dataset / "manifest.json", run, cfg, device="cpu", progress=False)
    blob = torch.load(model, weights_only=True)
    last = torch.load(run / "checkpoints" / "last_checkpoint_epoch=3.pt", weights_only=True)["network"]
    assert blob["weights"] == "final" and "best_epoch" not in blob
    assert set(blob["state_dict"]) == set(last)
    assert all(torch.equal(blob["state_dict"][k], v) for k, v in last.items())
    assert (run / "checkpoints" / "best_network.pt").is_file()


def test_latest_checkpoint_skips_a_truncated_one(tmp_path):
    """A truncated newest checkpoint (a full disk, a copy cut short, a version that wrote in place): resume takes
    the previous, complete one."""
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    torch.save({"w": torch.zeros(1000)}, ck / "last_checkpoint_epoch=3.pt")
    torch.save({"w": torch.zeros(1000)}, ck / "last_checkpoint_epoch=4.pt")
    assert latest_checkpoint(tmp_path).name == "last_checkpoint_epoch=4.pt"
    data = (ck / "last_checkpoint_epoch=4.pt").read_bytes()
    (ck / "last_checkpoint_epoch=4.pt").write_bytes(data[: len(data) // 2])
    assert latest_checkpoint(tmp_path).name == "last_checkpoint_epoch=3.pt"
    (ck / "last_checkpoint_epoch=3.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) is None


def test_last_checkpoint_replaces_the_previous_only_once_written(tmp_path, monkeypatch):
    """The per-epoch checkpoint is written before the previous one is removed: a writer that dies part-way leaves
    the previous checkpoint for --resume (ignite's saver removed it first, so a kill there lost the run), and the
    next successful write clears the partial file and every older "last" checkpoint."""
    from types import SimpleNamespace

    from monai_pipeline.training import write_last_checkpoint

    net = torch.nn.Linear(2, 1)
    trainer = SimpleNamespace(state=SimpleNamespace(epoch=1), state_dict=lambda: {"epoch": trainer.state.epoch})
    write_last_checkpoint(tmp_path, {"network": net}, trainer)
    assert latest_checkpoint(tmp_path).name == "last_checkpoint_epoch=1.pt"

    real_save = torch.save

    def dies_part_way(obj, f):
        Path(f).write_bytes(b"PK partial")
        raise KeyboardInterrupt("killed while writing")

    trainer.state.epoch = 2
    monkeypatch.setattr(torch, "save", dies_part_way)
    with pytest.raises(KeyboardInterrupt):
        write_last_checkpoint(tmp_path, {"network": net}, trainer)
    assert latest_checkpoint(tmp_path).name == "last_checkpoint_epoch=1.pt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("last_*")) == ["last_checkpoint_epoch=1.pt"]
    (tmp_path / "checkpoints" / ".last_checkpoint_epoch=2.pt.x.part.pt").write_bytes(b"left by a SIGKILL")

    monkeypatch.setattr(torch, "save", real_save)
    write_last_checkpoint(tmp_path, {"network": net}, trainer)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last_checkpoint_epoch=2.pt"]
    blob = torch.load(latest_checkpoint(tmp_path), weights_only=True)
    assert blob["trainer"] == {"epoch": 2} and torch.equal(blob["network"]["weight"], net.weight)
