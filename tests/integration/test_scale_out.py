"""Scale-out: distributed training under torchrun (gloo on the CPU), and batch inference that survives kills,
splits into shards and records failures."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import SimpleITK as sitk
import torch
import yaml

from monai_pipeline.data.manifest import load_manifest, relpath, write_manifest
from tests.helpers import TINY_OVERLAY, run_cli, tiny_model_file, wait_for_checkpoint

pytestmark = pytest.mark.slow  # end to end: subprocesses, training or real CT

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _all_cases(manifest):
    return [e for s in ("training", "validation", "test") for e in load_manifest(manifest, s)]


def test_two_process_training_identical_weights_one_checkpoint(tiny_dataset, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_OVERLAY, "training": {**TINY_OVERLAY["training"], "epochs": 2,
                                                                "val_interval": 1}}))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
            "-m", "monai_pipeline.cli", "train", "--manifest", str(tiny_dataset / "manifest.json"), "--out", str(run),
            "--config", str(cfg), "--device", "cpu", "--no-progress"]
    r = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{i}.json").read_text()) for i in range(2)]
    assert {x["backend"] for x in ranks} == {"gloo"} and {x["world_size"] for x in ranks} == {2}
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"], "DDP ranks diverged"
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best.json", "best_network.pt", "last_checkpoint_epoch=2.pt"], ckpts
    assert len((run / "log.csv").read_text().strip().splitlines()) == 3, "one log row per epoch (rank 0 only)"
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["epochs_trained"] == 2
    # resume works in distributed runs too
    r = subprocess.run([*args, "--resume", "--epochs", "3"], capture_output=True, text=True, env=ENV, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(run / "model.pt", weights_only=True)["epochs_trained"] == 3


def test_sigterm_preempts_two_process_training_and_resume_completes(tiny_dataset, tmp_path):
    """SIGTERM (as SLURM sends before preemption or the time limit) to a 2-process training mid-run: both ranks
    finish their step and stop together, rank 0 writes a checkpoint and the marker, the exit status says
    "preempted"; the resumed run ends at the configured epoch count with every epoch logged once."""
    cfg = tmp_path / "tiny.yaml"
    # enough epochs that a loaded machine cannot finish the run between the checkpoint and the signal
    cfg.write_text(yaml.safe_dump({**TINY_OVERLAY, "training": {**TINY_OVERLAY["training"], "epochs": 30,
                                                                "batch_size": 1, "val_interval": 50}}))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
            "-m", "monai_pipeline.cli", "train", "--manifest", str(tiny_dataset / "manifest.json"), "--out", str(run),
            "--config", str(cfg), "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    wait_for_checkpoint(run, 2, proc)
    time.sleep(0.15)
    os.killpg(proc.pid, signal.SIGTERM)  # every process of the job, as SLURM signals a job step
    _, err = proc.communicate(timeout=120)
    assert err.count("monai-pipeline: preempted:") == 2, err[-3000:]  # both ranks stopped cleanly
    marker = json.loads((run / "preempted.json").read_text())
    assert (run / "checkpoints" / marker["checkpoint"]).is_file() and not (run / "model.pt").exists()
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True, env=ENV, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (run / "preempted.json").exists()
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["epochs_trained"] == 30
    with open(run / "log.csv") as fh:
        epochs = [int(row["epoch"]) for row in csv.DictReader(fh)]
    assert epochs == list(range(1, 31)), epochs


def test_preempted_exit_status_in_process(tiny_dataset, tmp_path):
    """A single process: SIGUSR1 to itself mid-training gives exit status 75 and a checkpoint."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_OVERLAY, "training": {**TINY_OVERLAY["training"], "epochs": 30,
                                                                "batch_size": 1, "val_interval": 50}}))
    args = [sys.executable, "-m", "monai_pipeline.cli", "train", "--manifest", str(tiny_dataset / "manifest.json"),
            "--out", str(tmp_path / "run"), "--config", str(cfg), "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    from monai_pipeline.training import latest_checkpoint

    deadline = time.time() + 300
    while time.time() < deadline and latest_checkpoint(tmp_path / "run") is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert (tmp_path / "run" / "preempted.json").is_file()


def _infer_args(model, manifest, out, *extra):
    return [sys.executable, "-m", "monai_pipeline.cli", "infer", "--model", str(model), "--manifest", str(manifest),
            "--sections", "training,validation,test", "--out", str(out), "--device", "cpu", "--no-progress", *extra]


def test_batch_killed_then_resumed_every_case_once(tiny_dataset, tmp_path):
    model = tiny_model_file(tmp_path / "model.pt")
    out = tmp_path / "out"
    manifest = tiny_dataset / "manifest.json"
    cases = _all_cases(manifest)
    proc = subprocess.Popen(_infer_args(model, manifest, out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    # "[!.]*": the atomic writer's temporary files are hidden (".<name>.<random>.part.json")
    while time.time() < deadline and not any((out / ".done").glob("[!.]*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.stem for p in (out / ".done").glob("[!.]*.json")}
    assert 1 <= len(first) < len(cases), "killed part-way"
    r = subprocess.run(_infer_args(model, manifest, out), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    counts = {k: summary[k] for k in ("done", "skipped", "failed", "total")}
    assert counts == {"done": len(cases) - len(first), "skipped": len(first), "failed": 0, "total": len(cases)}
    with open(out / "timings.csv") as fh:
        second = [row["case_id"] for row in csv.DictReader(fh)]
    assert not set(second[-summary["done"]:]) & first, "no case predicted twice"
    for e in cases:
        mask = sitk.ReadImage(str(out / f"{e['case_id']}.nii.gz"))
        assert mask.GetSize() == sitk.ReadImage(str(e["image"])).GetSize()
    assert not [p for p in out.rglob(".*") if ".part" in p.name], "no temporary files left"


def test_two_shards_cover_every_case_once(tiny_dataset, tmp_path):
    model = tiny_model_file(tmp_path / "model.pt")
    out = tmp_path / "out"
    manifest = tiny_dataset / "manifest.json"
    for i in range(2):
        r = subprocess.run(_infer_args(model, manifest, out, "--shard", f"{i}/2"), capture_output=True, text=True,
                           env=ENV, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    s = [json.loads((out / f"summary.{i}of2.json").read_text()) for i in range(2)]
    assert s[0]["done"] + s[1]["done"] == len(_all_cases(manifest)) and s[0]["skipped"] == s[1]["skipped"] == 0
    assert {p.stem for p in (out / ".done").glob("*.json")} == {e["case_id"] for e in _all_cases(manifest)}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_corrupt_case_in_batch_is_recorded_and_others_done(tiny_dataset, tmp_path, workers):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    cases = _all_cases(data / "manifest.json")
    victim = cases[len(cases) // 2]
    assert str(data) in victim["image"], "the copy is damaged, never the shared fixture"
    with open(victim["image"], "r+b") as fh:
        fh.truncate(fh.seek(0, 2) // 2)  # half the file: header intact, image data cut
    model = tiny_model_file(tmp_path / "model.pt")
    r = run_cli("infer", "--model", model, "--manifest", data / "manifest.json", "--sections",
                "training,validation,test", "--out", tmp_path / "out", "--device", "cpu", "--no-progress",
                "--workers", workers)
    assert r.returncode == 1
    with open(tmp_path / "out" / "failures.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [x["case_id"] for x in rows] == [victim["case_id"]] and rows[0]["reason"]
    done = {p.stem for p in (tmp_path / "out" / ".done").glob("*.json")}
    assert done == {e["case_id"] for e in cases} - {victim["case_id"]}
    assert not (tmp_path / "out" / f"{victim['case_id']}.nii.gz").exists()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["processes"] == int(workers)


def _repeated_manifest(manifest, path, copies):
    """A manifest listing every case of ``manifest`` ``copies`` times under new case ids (the same files): a batch
    long enough that an interrupt sent after its first case always arrives while cases remain (6 tiny cases could
    all finish first on a loaded machine)."""
    sections = {s: [{**e, "case_id": f"{e['case_id']}_{i}", "image": relpath(e["image"], path),
                     "label": relpath(e["label"], path)}
                    for i in range(copies) for e in load_manifest(manifest, s)]
                for s in ("training", "validation", "test")}
    return write_manifest(path, sections)


def _as_from_a_terminal(args: list[str]) -> list[str]:
    """``args`` (a Python command) started with SIGINT at its default, as a terminal starts a command. A shell
    starts a background job (``make test &``, ``nohup ... &``) with SIGINT ignored, every child inherits that,
    and a Python started so never sees a Ctrl-C: the batch would run to its end and exit 0."""
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", reset, *args]


def test_ctrl_c_stops_a_batch_with_helper_processes_cleanly(tiny_dataset, tmp_path):
    """SIGINT to the process group (Ctrl-C) of a batch running a helper process: exit 130 with one line, no case
    reported as failed for it, no process left behind; the next run finishes the rest."""
    model = tiny_model_file(tmp_path / "model.pt")
    out = tmp_path / "out"
    manifest = _repeated_manifest(tiny_dataset / "manifest.json", tmp_path / "manifest.json", copies=6)
    proc = subprocess.Popen(_as_from_a_terminal(_infer_args(model, manifest, out, "--workers", "2")),
                            env={**ENV, "OMP_NUM_THREADS": "2"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any((out / ".done").glob("[!.]*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "monai-pipeline: interrupted" in err, err[-2000:]
    assert "helper process died" not in err and not (out / "failures.csv").exists(), err[-2000:]
    assert "Traceback" not in err and "Exception in thread" not in err, err[-2000:]
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(proc.pid)], capture_output=True, text=True).stdout
    running = [ln for ln in ps.splitlines() if ln.split()[1][0] != "Z"]  # an exited, not yet reaped child is gone
    assert not running, f"processes outlived the interrupted batch: {running}"
    r = subprocess.run(_infer_args(model, manifest, out), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.stem for p in (out / ".done").glob("*.json")} == {e["case_id"] for e in _all_cases(manifest)}
