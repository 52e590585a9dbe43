"""The operating point a trained model ships with: the threshold rule on scores with a known answer, and a real
model calibrated on validation cases whose ``infer`` then drops exactly the lesions below it."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from monai_pipeline.calibration import (
    calibrate_model,
    candidates_point,
    choose_threshold,
    completed_training_data,
    cross_fitted_groups,
    cross_fitted_points,
    fit_second_stage,
    out_of_sample_detections,
    scan_detections,
)
from monai_pipeline.data.manifest import load_manifest
from monai_pipeline.evaluation.detection import ScanDetections
from monai_pipeline.evaluation.evaluate import load_candidates
from monai_pipeline.postprocess.candidates import CandidateClassifier
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


def _scan(rng, case_id, n_nodules, n_fp):
    """A validation scan as calibration stores it: nodules round and large, false positives elongated; the
    network scores both near 1."""
    def cand(hit, d, elong):
        eq = d
        return {"volume_mm3": np.pi / 6 * d ** 3, "elongation": elong, "mean_hu": rng.uniform(-100, 50),
                "max_hu": 100.0, "network_score": rng.uniform(0.99, 1 - 1e-7), "longest_axial_diameter_mm": eq,
                "equivalent_diameter_mm": eq, "centre": [0.0, 0.0, 0.0], "hit": hit}
    cands = [cand(i, rng.uniform(6, 14), rng.uniform(1.0, 1.4)) for i in range(n_nodules)]
    cands += [cand(-1, rng.uniform(3, 6), rng.uniform(2.0, 4.0)) for _ in range(n_fp)]
    return {"case_id": case_id, "n_nodules": n_nodules + 1, "candidates": cands}  # one nodule missed


def test_each_fold_gets_the_second_stage_fitted_on_the_other_folds():
    rng = np.random.default_rng(0)
    cands = {k: [_scan(rng, f"{k}{i}", 2, 6) for i in range(3)] for k in range(3)}
    points = {k: {"candidates": v, "detections": [vars(d) for d in scan_detections(v)]} for k, v in cands.items()}
    got = cross_fitted_points(points, fp_per_scan=1.0, fp_reduction=True)
    for k in range(3):
        others = [scan for j in range(3) if j != k for scan in cands[j]]
        clf = fit_second_stage(others)
        assert got[k]["classifier"] == clf and CandidateClassifier.from_dict(clf).n_positive == 2 * 3 * 2
        assert got[k]["threshold"] == choose_threshold(out_of_sample_detections(others, clf), 1.0)["threshold"]
        # the network ties nodules with false positives; the second stage separates them on these folds
        assert got[k]["sensitivity"] > choose_threshold(scan_detections(others), 1.0)["sensitivity"]
    assert cross_fitted_points(points, 1.0)[0]["classifier"] is None  # second stage off: the network's scores


def test_each_group_of_a_fold_is_scored_at_the_point_chosen_on_every_other_group():
    """Cross-fitting under cv: a fold's held-out scans in two groups; each group's point (threshold and second
    stage) comes from the other folds' candidates and the other group of its own fold, never from its own scans."""
    rng = np.random.default_rng(2)
    cands = {k: [_scan(rng, f"{k}{i}", 2, 4 + 3 * k) for i in range(5)] for k in range(2)}
    points = {k: {"candidates": v} for k, v in cands.items()}
    for on in (False, True):
        got = cross_fitted_groups(points, 1.0, fp_reduction=on)
        for k in range(2):
            assert [p["cases"] for p in got[k]] == [[s["case_id"] for s in cands[k][g::2]] for g in range(2)]
            for part in got[k]:
                mine = set(part["cases"])
                rest = [s for j in range(2) for s in cands[j] if s["case_id"] not in mine]
                assert part["chosen_on_scans"] == len(rest) == 10 - len(mine)
                expect = candidates_point(rest, 1.0, on)
                assert part["threshold"] == expect["threshold"] and part["classifier"] == expect["classifier"]
                assert (part["classifier"] is not None) == on
    # model files without stored candidates: the other folds alone (cross_fitted_points)
    assert cross_fitted_groups({0: points[0], 1: {"detections": []}}, 1.0) is None


def _lesions(folder, case_id):
    with open(folder / f"{case_id}_lesions.csv") as fh:
        return list(csv.DictReader(fh))


def test_threshold_scores_are_out_of_sample():
    """Each scan's candidates, for the threshold, are scored by a classifier fitted without its group."""
    rng = np.random.default_rng(1)
    scans = [_scan(rng, f"s{i}", 2, 5) for i in range(10)]
    full = fit_second_stage(scans)
    got = out_of_sample_detections(scans, full, groups=5)
    assert sorted(d.case_id for d in got) == sorted(s["case_id"] for s in scans)
    held = [scans[0], scans[5]]  # group 0 of 5: scans 0 and 5
    expect = scan_detections(held, fit_second_stage([s for i, s in enumerate(scans) if i % 5]))
    assert got[:2] == expect and got[:2] != scan_detections(held, full)


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
        # every candidate stays in the candidate table, marked kept or not: what evaluate's FROC ranks
        with open(tmp_path / "cut" / f"{e['case_id']}_candidates.csv") as fh:
            cands = list(csv.DictReader(fh))
        assert sorted(float(r["score"]) for r in cands) == sorted(float(r["score"]) for r in kept)
        assert all((r["kept"] == "1") == (float(r["score"]) >= threshold) for r in cands)
        assert [load_candidates(tmp_path / "cut", e["case_id"])] == [load_candidates(tmp_path / "all", e["case_id"])]


def test_second_stage_scores_what_infer_writes(trained_tiny_model, tiny_dataset, tmp_path):
    """A model file carrying a classifier: every lesion ``infer`` writes is scored by it from its own row (the
    network's score kept beside it), and calibration with fp_reduction stores what it fitted."""
    model = tmp_path / "model.pt"
    shutil.copy(trained_tiny_model, model)
    val = load_manifest(tiny_dataset / "manifest.json", "validation")
    test = load_manifest(tiny_dataset / "manifest.json", "test")
    point = calibrate_model(model, val, fp_per_scan=1.0, fp_reduction=True)
    blob = torch.load(model, weights_only=True)
    assert blob["config"]["inference"]["candidate_classifier"] == point["classifier"]
    assert [d["case_id"] for d in point["candidates"]] == [e["case_id"] for e in val]
    assert [d["case_id"] for d in point["detections"]] == [e["case_id"] for e in val]
    rng = np.random.default_rng(5)  # a classifier of known weights, whatever the tiny model's validation held
    forced = fit_second_stage([_scan(rng, "x", 3, 9), _scan(rng, "y", 2, 7)])
    blob["config"]["inference"]["candidate_classifier"] = forced
    torch.save(blob, model)
    cases = val + test  # the raw decision: the tiny volumes have no lungs, so the lung filter would empty them
    r = run_cli("infer", "--model", model, "--input", *(e["image"] for e in cases), "--out", tmp_path / "out",
                "--device", "cpu", "--no-progress", "--workers", "1", "--no-postprocess")
    assert r.returncode == 0, r.stderr
    rows = [row for e in cases for row in _lesions(tmp_path / "out", e["case_id"])]
    assert rows, "the tiny model finds candidates"
    expect = CandidateClassifier.from_dict(forced).predict(rows)
    assert [float(row["score"]) for row in rows] == pytest.approx(expect.tolist(), rel=1e-6)
    assert any(float(row["score"]) != float(row["network_score"]) for row in rows)
    blob["config"]["inference"]["candidate_classifier"] = {**forced, "weights": [1.0]}  # broken: refused first
    torch.save(blob, model)
    r = run_cli("infer", "--model", model, "--input", test[0]["image"], "--out", tmp_path / "bad", "--device", "cpu",
                "--no-progress")
    assert r.returncode == 2 and "candidate_classifier" in r.stderr and not (tmp_path / "bad").exists()


def test_calibrate_verb_chooses_the_point_again(trained_tiny_model, tiny_dataset, tmp_path):
    """``monai-pipeline calibrate`` chooses the point again on the validation cases at the rate and with the
    second stage asked for (the library's choice on the detections it stores); a fold the manifest lacks is one
    line, exit 2, and the model file untouched."""
    model = tmp_path / "model.pt"
    shutil.copy(trained_tiny_model, model)
    manifest = tiny_dataset / "manifest.json"
    for rate, extra in (("1000", []), ("0.5", ["--no-fp-reduction"])):
        r = run_cli("calibrate", "--model", model, "--manifest", manifest, "--fp-per-scan", rate, *extra,
                    "--device", "cpu")
        assert r.returncode == 0, r.stderr[-2000:]
        blob = torch.load(model, weights_only=True)
        point = blob["operating_point"]
        scans = [ScanDetections(**d) for d in point["detections"]]
        assert point["target_fp_per_scan"] == float(rate) and point["fp_per_scan"] <= float(rate)
        assert point["threshold"] == choose_threshold(scans, float(rate))["threshold"]
        assert len(scans) == len(load_manifest(manifest, "validation"))
        if point["threshold"] is not None:
            assert blob["config"]["inference"]["min_lesion_score"] == point["threshold"]
        assert r.stdout.startswith("operating point: ") and str(model) in r.stdout
    assert point["classifier"] is None  # --no-fp-reduction

    before = model.read_bytes()
    r = run_cli("calibrate", "--model", model, "--manifest", manifest, "--fold", "99", "--device", "cpu")
    assert r.returncode == 2 and "fold must be one of" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert model.read_bytes() == before


def test_recalibration_completes_an_older_files_training_data_with_its_slice_spacings(tiny_dataset):
    """A model file from before slice spacings were recorded gets them when it is recalibrated, from the manifest's
    training cases, but only when those are the cases it says it was trained on; a file that has them keeps
    them. The range is checked against nibabel's affines (the voxel axis nearest head-foot)."""
    import nibabel as nib

    train_files = load_manifest(tiny_dataset / "manifest.json", "training")
    older = {"trained_on": sorted(e["case_id"] for e in train_files),
             "training_data": {"n_cases": len(train_files), "sources": {"synthetic": len(train_files)}}}
    card = completed_training_data(older, train_files)
    slices = []
    for e in train_files:
        affine = nib.load(str(e["image"])).affine[:3, :3]
        slices.append(float(np.linalg.norm(affine[:, np.argmax(np.abs(affine[2]))])))
    assert card["slice_spacing_mm"] == pytest.approx([min(slices), max(slices)])
    assert card["n_cases"] == len(train_files)
    assert completed_training_data(older, train_files[:-1]) is None  # not the cases it was trained on
    assert completed_training_data({**older, "training_data": card}, train_files) is None  # recorded already
