"""The operating point a trained model ships with: the threshold rule on scores with a known answer, and a real
model calibrated on validation cases whose ``infer`` then drops exactly the lesions below it."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

from monai_pipeline.calibration import calibrate_model, choose_threshold, cross_fitted_points
from monai_pipeline.data.manifest import load_manifest
from monai_pipeline.evaluation.detection import ScanDetections
from tests.helpers import run_cli


def test_lowest_threshold_within_the_false_positive_rate():
    scans = [ScanDetections("a", [0.9, None], [0.95, 0.5]), ScanDetections("b", [0.6], [0.7, 0.3])]
    p = choose_threshold(scans, fp_per_scan=1.0)  # 2 scans: at most 2 false positives (0.95 and 0.7)
    assert p["threshold"] == pytest.approx(0.6) and p["fp_per_scan"] == 1.0
    assert p["sensitivity"] == pytest.approx(2 / 3)
    assert choose_threshold(scans, fp_per_scan=10.0)["threshold"] == 0.0, "every candidate within the rate"


def test_scores_that_do_not_separate_set_no_threshold():
    scans = [ScanDetections("a", [0.5], [1.0, 1.0, 0.9])]
    assert choose_threshold(scans, fp_per_scan=1.0)["threshold"] is None


def test_each_fold_gets_the_threshold_the_other_folds_chose():
    a = [ScanDetections("a", [0.9], [0.95, 0.2])]
    b = [ScanDetections("b", [0.6, None], [0.7, 0.65])]
    c = [ScanDetections("c", [0.8], [0.85])]
    points = {k: {"detections": [vars(s) for s in v]} for k, v in ((0, a), (1, b), (2, c))}
    got = cross_fitted_points(points, fp_per_scan=1.0)
    for k, others in ((0, b + c), (1, a + c), (2, a + b)):
        assert got[k]["chosen_on_folds"] == [j for j in (0, 1, 2) if j != k]
        assert got[k]["threshold"] == choose_threshold(others, fp_per_scan=1.0)["threshold"]
    assert got[0]["threshold"] == pytest.approx(0.7)  # b and c: 2 scans, so 2 false positives (0.85, 0.7) allowed
    # a fold whose others stored no detections keeps its own threshold (left out here)
    assert cross_fitted_points({0: points[0], 1: None}, 1.0).keys() == {1}


def _lesions(folder, case_id):
    with open(folder / f"{case_id}_lesions.csv") as fh:
        return list(csv.DictReader(fh))


def test_calibrated_model_drops_the_lesions_below_its_threshold(trained_tiny_model, tiny_dataset, tmp_path):
    model = tmp_path / "model.pt"
    shutil.copy(trained_tiny_model, model)
    val = load_manifest(tiny_dataset / "manifest.json", "validation")
    test = load_manifest(tiny_dataset / "manifest.json", "test")
    point = calibrate_model(model, val, fp_per_scan=0.5)
    blob = torch.load(model, weights_only=True)
    assert blob["operating_point"]["n_scans"] == len(val)
    assert [d["case_id"] for d in blob["operating_point"]["detections"]] == [e["case_id"] for e in val]
    stored = blob["config"]["inference"]["min_lesion_score"]
    assert stored == (point["threshold"] if point["threshold"] is not None else 0.0)
    # a threshold is forced where the tiny model's candidates would keep none: --min-score overrides the model's
    threshold = stored or 0.5
    for name, extra in (("all", ["--min-score", "0"]), ("cut", ["--min-score", str(threshold)])):
        r = run_cli("infer", "--model", model, "--input", *(e["image"] for e in test), "--out", tmp_path / name,
                    "--device", "cpu", "--no-progress", "--workers", "1", *extra)
        assert r.returncode == 0, r.stderr
    for e in test:
        kept = _lesions(tmp_path / "all", e["case_id"])
        cut = _lesions(tmp_path / "cut", e["case_id"])
        assert sorted(float(r["score"]) for r in cut) == sorted(float(r["score"]) for r in kept
                                                                   if float(r["score"]) >= threshold)
