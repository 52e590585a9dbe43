"""Helper processes of a batch: how many, the same outputs as one process, and what a dead or missing helper
costs (only the case it held)."""

from __future__ import annotations

import csv
import logging
import os
import signal
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from monai_pipeline.data.manifest import load_manifest
from monai_pipeline.errors import PipelineError
from monai_pipeline.inference import Predictor, run_batch
from monai_pipeline.inference import workers as W
from monai_pipeline.inference.case import CaseOptions
from monai_pipeline.inference.workers import HelperProcesses, resolve_workers
from tests.helpers import tiny_model_file

CPU = torch.device("cpu")


def _cases(tiny_dataset) -> list[tuple[str, str]]:
    return [(e["case_id"], e["image"]) for s in ("training", "validation", "test")
            for e in load_manifest(tiny_dataset / "manifest.json", s)]


def test_auto_is_one_process_per_thread_within_cases_and_memory(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(W, "available_memory_gib", lambda: 100.0)
    assert resolve_workers("auto", 20, CPU) == 8
    assert resolve_workers("auto", 3, CPU) == 3, "never more processes than cases"
    assert resolve_workers("auto", 1, CPU) == 1
    monkeypatch.setattr(W, "available_memory_gib", lambda: 7.0)
    assert resolve_workers("auto", 20, CPU) == int(7.0 // W.WORKER_MEMORY_GIB)
    monkeypatch.setattr(W, "available_memory_gib", lambda: 1.0)
    assert resolve_workers("auto", 20, CPU) == 1
    assert resolve_workers(4, 20, CPU) == 4 and resolve_workers(4, 2, CPU) == 2


def test_one_process_on_a_gpu_and_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert resolve_workers("auto", 20, torch.device("cuda")) == 1
    with pytest.raises(PipelineError, match="one process drives the device"):
        resolve_workers(2, 20, torch.device("cuda"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_workers("auto", 20, CPU) == 1 and resolve_workers(3, 20, CPU) == 1
    with pytest.raises(PipelineError, match="positive integer"):
        resolve_workers(0, 20, CPU)


def test_two_processes_write_what_one_writes(tiny_dataset, tmp_path):
    """Same probabilities (bit for bit), masks and lesion table with a helper process as without; every case
    done once, one timings row each."""
    model = tiny_model_file(tmp_path / "model.pt")
    cases = _cases(tiny_dataset)
    one = run_batch(Predictor(model, device="cpu"), cases, tmp_path / "one", save_prob=True, progress=False)
    two = run_batch(Predictor(model, device="cpu"), cases, tmp_path / "two", save_prob=True, progress=False,
                    workers=2)
    assert (one.done, two.done, two.failed) == (len(cases), len(cases), 0)
    import json

    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2
    for cid, _ in cases:
        for name in (f"{cid}.nii.gz", f"{cid}_prob.nii.gz"):
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "one" / name)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "two" / name)))
            assert np.array_equal(a, b), name
    prob = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "two" / f"{cases[0][0]}_prob.nii.gz")))
    assert 0.01 < prob.mean() < 0.99, "the comparison is of real probabilities, not a constant"
    assert (tmp_path / "one" / "lesions.csv").read_text() == (tmp_path / "two" / "lesions.csv").read_text()
    with open(tmp_path / "two" / "timings.csv") as fh:
        assert sorted(r["case_id"] for r in csv.DictReader(fh)) == sorted(c for c, _ in cases)


def test_a_killed_helper_fails_only_the_case_it_held(tiny_dataset, tmp_path):
    model = tiny_model_file(tmp_path / "model.pt")
    predictor = Predictor(model, device="cpu")
    cases = _cases(tiny_dataset)
    out = tmp_path / "out"
    out.mkdir()
    with HelperProcesses(1, predictor, cases, CaseOptions(out, predictor.provenance()), 1, False) as helpers:
        deadline = time.time() + 120
        while helpers.cases.qsize() == len(cases) and time.time() < deadline:  # until the helper holds a case
            time.sleep(0.001)
        os.kill(helpers.pids[0], signal.SIGKILL)
        outcomes = helpers.outcomes(wait=True)
        left = list(iter(helpers.take, None))
    failed = [o for o in outcomes if o.reason is not None]
    done = [o.case_id for o in outcomes if o.seconds is not None]
    assert len(failed) == 1 and "helper process died (exit code -9" in failed[0].reason
    ids = done + [failed[0].case_id] + [c.case_id for c in left]
    assert sorted(ids) == sorted(c for c, _ in cases), "every case accounted for exactly once"


def test_ctrl_c_reaching_a_starting_helper_leaves_it_to_the_parent(tiny_dataset, tmp_path):
    """Ctrl-C goes to the whole process group; a helper still importing its modules must not die of it (with a
    traceback): it ignores SIGINT, finishes its cases, and the parent keeps its own Ctrl-C handler."""
    model = tiny_model_file(tmp_path / "model.pt")
    predictor = Predictor(model, device="cpu")
    cases = _cases(tiny_dataset)
    out = tmp_path / "out"
    out.mkdir()
    handler = signal.getsignal(signal.SIGINT)
    with HelperProcesses(1, predictor, cases, CaseOptions(out, predictor.provenance()), 1, False) as helpers:
        os.kill(helpers.pids[0], signal.SIGINT)  # at once: the helper is still importing torch
        assert signal.getsignal(signal.SIGINT) is handler
        outcomes = helpers.outcomes(wait=True)
    assert outcomes and all(o.reason is None for o in outcomes), [o.reason for o in outcomes]
    assert len(outcomes) == len(cases)


def test_a_helper_that_cannot_start_leaves_its_cases_to_the_others(tiny_dataset, tmp_path, caplog):
    """The model file changes after the batch started: the helper refuses to predict with another model, and
    the batch finishes in the calling process with the model it started with."""
    model = tiny_model_file(tmp_path / "model.pt")
    predictor = Predictor(model, device="cpu")
    torch.manual_seed(1)
    tiny_model_file(tmp_path / "model.pt")  # other weights in the same file
    with caplog.at_level(logging.WARNING):
        summary = run_batch(predictor, _cases(tiny_dataset), tmp_path / "out", progress=False, workers=2)
    assert (summary.done, summary.failed) == (len(_cases(tiny_dataset)), 0)
    assert "could not start" in caplog.text and "changed since the batch started" in caplog.text


def test_helpers_repeat_what_the_parent_hides():
    """A spawned helper inherits no logging level or warning filter; it is given the parent's."""
    import warnings

    from monai_pipeline.inference.workers import _apply_quiet_settings, _quiet_settings

    logger = logging.getLogger("monai_pipeline.test_quiet")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="a library's chatter")
        logger.setLevel(logging.ERROR)
        settings = _quiet_settings()
        warnings.resetwarnings()
        logger.setLevel(logging.NOTSET)
        _apply_quiet_settings(settings)
        assert logger.level == logging.ERROR
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn("a library's chatter", UserWarning, stacklevel=1)
        assert not seen

