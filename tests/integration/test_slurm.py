"""The SLURM scripts as written, on a laptop-sized simulation: stub ``srun``, ``scontrol`` and ``sbatch`` first on
PATH, the SLURM_* variables a real allocation sets, two "nodes" as two torchrun launchers on the loopback address
(c10d rendezvous, gloo, CPU), a preemption that requeues, and an inference array with one task killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
import yaml

from tests.conftest import REPO
from tests.helpers import TINY_OVERLAY, run_cli, wait_for_checkpoint

pytestmark = pytest.mark.slow  # end to end: subprocesses, training or real CT

SRUN = """#!/bin/bash
# stub srun: the command once per node (--ntasks-per-node=1), SLURM_NODEID/SLURM_PROCID set; signals forwarded
while [[ "${1:-}" == --* ]]; do shift; done
pids=()
forward() { kill -TERM "${pids[@]}" 2>/dev/null; }
trap forward TERM INT
for ((i = 0; i < ${SLURM_JOB_NUM_NODES:-1}; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 "$@" &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null; do wait "$p"; done
    wait "$p"; s=$?; [ $s -ne 0 ] && status=$s
done
exit $status
"""
SCONTROL = """#!/bin/bash
# stub scontrol: hostnames of the allocation (all on loopback here) and requeue requests (recorded)
case "$1" in
    show) echo 127.0.0.1; echo 127.0.0.1 ;;
    requeue) echo "$2" >> "$SCONTROL_LOG" ;;
esac
"""
SBATCH = r"""#!/bin/bash
# stub sbatch: as Slurm does, open the --output file (the script's #SBATCH line) in the submission folder before
# the script runs, and fail the job without running it when that file cannot be opened; then run the script in
# the foreground, as the allocation's batch step would, its output going to the log and to stdout
script="$1"
log=$(sed -n 's/^#SBATCH --output=\([^ ]*\).*/\1/p' "$script" | head -n 1)
log=${log:-slurm-%j.out}
name=$(sed -n 's/^#SBATCH --job-name=\([^ ]*\).*/\1/p' "$script" | head -n 1)
log=${log//%x/${name:-job}}; log=${log//%j/${SLURM_JOB_ID:-0}}
log=${log//%A/${SLURM_ARRAY_JOB_ID:-0}}; log=${log//%a/${SLURM_ARRAY_TASK_ID:-0}}
: >> "$log" 2>/dev/null || { echo "sbatch stub: cannot open the job log $log (as Slurm, the job fails)" >&2; exit 1; }
exec bash "$@" > >(tee -a "$log") 2>&1
"""


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A fresh clone of the repository (no ``logs/`` made by hand): the scripts are submitted from its root."""
    root = tmp_path_factory.mktemp("clone") / "monai-pipeline"
    subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra) -> dict:
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("sbatch", SBATCH)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    return {**os.environ, "PATH": f"{stubs}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "VENV": sys.prefix, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
            "SCONTROL_LOG": str(tmp_path / "scontrol.log"), **{k: str(v) for k, v in extra.items()}}


def _train_env(tmp_path, tiny_dataset, epochs: int):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_OVERLAY, "training": {**TINY_OVERLAY["training"], "batch_size": 1,
                                                                "val_interval": 50}}))
    return _env(tmp_path, SLURM_JOB_ID=4242, SLURM_JOB_NUM_NODES=2, SLURM_JOB_NODELIST="node[01-02]",
                GPUS_PER_NODE=1, DEVICE="cpu", MANIFEST=tiny_dataset / "manifest.json", RUN=tmp_path / "run",
                CONFIG=cfg, EPOCHS=epochs, MASTER_PORT=_free_port())


def test_multinode_training_preempted_requeued_and_resumed(tiny_dataset, tmp_path, checkout):
    env = _train_env(tmp_path, tiny_dataset, epochs=6)
    script = checkout / "scripts" / "slurm" / "train_multinode.sbatch"
    proc = subprocess.Popen(["sbatch", str(script)], env=env, cwd=checkout, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    run = tmp_path / "run"
    wait_for_checkpoint(run, 2, proc)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends the batch script before the time limit
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    assert "requeueing job 4242" in out and (tmp_path / "scontrol.log").read_text().split() == ["4242"]
    ranks = [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("rank*.json"))]
    assert not (run / "model.pt").exists() and ranks == []
    # the requeued job: same script, same environment, resumes and finishes
    env["MASTER_PORT"] = str(_free_port())
    r = subprocess.run(["sbatch", str(script)], env=env, cwd=checkout, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "requeueing job 4242" in (checkout / "logs" / "mp-train-4242.out").read_text()
    ranks = [json.loads((run / "ranks" / f"rank{i}.json").read_text()) for i in range(2)]
    assert {x["world_size"] for x in ranks} == {2} and {x["backend"] for x in ranks} == {"gloo"}
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    import csv

    with open(run / "log.csv") as fh:
        assert [int(row["epoch"]) for row in csv.DictReader(fh)] == list(range(1, 7))


def test_missing_optional_config_is_skipped_with_a_message(tiny_dataset, tmp_path, checkout):
    env = _train_env(tmp_path, tiny_dataset, epochs=1)
    env["CONFIG"] = str(tmp_path / "absent.yaml")
    env["EPOCHS"] = "1"
    r = subprocess.run(["sbatch", str(checkout / "scripts" / "slurm" / "train_multinode.sbatch")], env=env,
                       cwd=checkout, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "optional config" in r.stdout and "not found" in r.stdout
    assert (tmp_path / "run" / "model.pt").is_file()


def test_inference_array_with_a_killed_task_equals_one_infer(tiny_dataset, trained_tiny_model, tmp_path, checkout):
    manifest = tiny_dataset / "manifest.json"
    out = tmp_path / "array_out"
    script = checkout / "scripts" / "slurm" / "infer_array.sbatch"

    def task(i: int) -> dict:
        return _env(tmp_path, SLURM_ARRAY_JOB_ID=77, SLURM_ARRAY_TASK_ID=i, SLURM_ARRAY_TASK_MIN=0,
                    SLURM_ARRAY_TASK_MAX=2, MODEL=trained_tiny_model, MANIFEST=manifest, OUT=out, DEVICE="cpu",
                    SW_BATCH_SIZE=2)

    for i in (0, 2):
        r = subprocess.run(["sbatch", str(script)], env=task(i), cwd=checkout, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    # task 1 is killed once its first case is done, then re-run (as a requeue would)
    proc = subprocess.Popen(["sbatch", str(script)], env=task(1), cwd=checkout, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    before = {p.stem for p in (out / ".done").glob("[!.]*.json")}
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and \
            not {p.stem for p in (out / ".done").glob("[!.]*.json")} - before:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    r = subprocess.run(["sbatch", str(script)], env=task(1), cwd=checkout, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    single = tmp_path / "single"
    r = run_cli("infer", "--model", trained_tiny_model, "--manifest", manifest, "--sections",
                "training,validation,test", "--out", single, "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    masks = sorted(p.name for p in single.glob("*.nii.gz"))
    assert masks and sorted(p.name for p in out.glob("*.nii.gz")) == masks
    for name in masks:
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))).tobytes() == \
            sitk.GetArrayFromImage(sitk.ReadImage(str(single / name))).tobytes(), name
        lesions = name.replace(".nii.gz", "_lesions.csv")
        assert (out / lesions).read_text() == (single / lesions).read_text()
    assert not [p for p in out.rglob(".*") if ".part" in p.name]
    assert (checkout / "logs" / "mp-infer-77_2.out").is_file(), "the job log, where Slurm would write it"


def test_submission_without_a_log_folder_fails_as_slurm_does(tmp_path):
    """The stub is faithful: from a folder without ``logs/`` the job fails before the script runs."""
    r = subprocess.run(["sbatch", str(REPO / "scripts" / "slurm" / "infer_array.sbatch")], env=_env(tmp_path),
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot open the job log logs/" in r.stderr
