"""monai-pipeline cv: every fold trained, each held-out case predicted by the fold model that did not train on
it, the summary over out-of-fold predictions only, and the folder usable as an ensemble model."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from monai_pipeline.calibration import choose_threshold, scan_detections
from monai_pipeline.evaluation.detection import ScanDetections
from tests.helpers import TINY_OVERLAY, run_cli

pytestmark = pytest.mark.slow  # end to end: subprocesses, training or real CT


def _lesion_rows(folder, case_id):
    with open(folder / f"{case_id}_lesions.csv") as fh:
        return list(csv.DictReader(fh))


def test_cv_out_of_fold_and_ensemble(tiny_dataset, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_OVERLAY, "training": {**TINY_OVERLAY["training"], "epochs": 2,
                                                                "val_interval": 1, "operating_fp_per_scan": 1.0}}))
    manifest = tiny_dataset / "manifest.json"
    data = json.loads(manifest.read_text())
    folds = sorted({e["fold"] for e in data["training"]})
    use = folds[:2]
    cv = tmp_path / "cv"
    r = run_cli("cv", "--manifest", manifest, "--out", cv, "--folds", ",".join(map(str, use)), "--config", cfg,
                "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((cv / "summary.json").read_text())
    oof = sorted(e["case_id"] for e in data["training"] if e["fold"] in use)
    assert sorted(summary["cases"]) == oof  # out-of-fold cases only: no validation/test case, no trained case
    for e in data["training"]:
        if e["fold"] not in use:
            continue
        marker = json.loads((cv / "predictions" / ".done" / f"{e['case_id']}.json").read_text())
        fold_model = torch.load(cv / f"fold_{e['fold']}" / "model.pt", weights_only=True)
        assert e["case_id"] not in fold_model["trained_on"] and e["case_id"] not in marker["provenance"]["trained_on"]
    # each group of a fold's held-out cases is scored at the threshold chosen on every other group's candidates
    # (the other fold's and the rest of its own), never on its own cases
    index = json.loads((cv / "cv.json").read_text())
    points = index["operating_points"]
    stored = {k: torch.load(cv / f"fold_{k}" / "model.pt", weights_only=True)["operating_point"] for k in use}
    expect_all = choose_threshold([ScanDetections(**d) for p in stored.values() for d in p["detections"]], 1.0)
    assert index["ensemble_operating_point"]["threshold"] == expect_all["threshold"]  # what infer --model CV uses
    for k in use:
        fold_ids = sorted(e["case_id"] for e in data["training"] if e["fold"] == k)
        assert sorted(c for part in points[str(k)] for c in part["cases"]) == fold_ids
        for part in points[str(k)]:
            rest = [scan for j in use for scan in stored[j]["candidates"]
                    if not (j == k and scan["case_id"] in part["cases"])]
            assert part["chosen_on_scans"] == len(rest) and not set(part["cases"]) & {s["case_id"] for s in rest}
            expect = choose_threshold(scan_detections(rest), 1.0)["threshold"]
            assert part["threshold"] == expect
            for cid in part["cases"]:
                with open(cv / "predictions" / f"{cid}_lesions.csv") as fh:
                    assert all(float(r["score"]) >= (expect or 0.0) for r in csv.DictReader(fh))
    # the batch lesion table holds every out-of-fold case's lesions, not only the last prediction call's
    with open(cv / "predictions" / "lesions.csv") as fh:
        table = [r["case_id"] for r in csv.DictReader(fh)]
    assert sorted(table) == sorted(cid for cid in oof for _ in _lesion_rows(cv / "predictions", cid))
    # a second run resumes: nothing retrained, nothing predicted again
    stamps = {k: (cv / f"fold_{k}" / "model.pt").stat().st_mtime_ns for k in use}
    r = run_cli("cv", "--manifest", manifest, "--out", cv, "--folds", ",".join(map(str, use)), "--config", cfg,
                "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert stamps == {k: (cv / f"fold_{k}" / "model.pt").stat().st_mtime_ns for k in use}
    last = json.loads((cv / "predictions" / "summary.json").read_text())
    assert last["done"] == 0 and last["skipped"] == sum(e["fold"] == use[-1] for e in data["training"])
    # --recalibrate at another rate, decision threshold and post-processing: nothing trained, each fold model's
    # point chosen again on its own fold's cases at the configuration's rate, threshold and steps (stored in the
    # model), the old predictions replaced by ones at the new cross-fitted points
    before = {k: torch.load(cv / f"fold_{k}" / "model.pt", weights_only=True) for k in use}
    cfg4 = tmp_path / "tiny4.yaml"
    cfg4.write_text(yaml.safe_dump({**TINY_OVERLAY, "training": {**TINY_OVERLAY["training"], "epochs": 2,
                                                                 "val_interval": 1, "operating_fp_per_scan": 4.0},
                                    "inference": {**TINY_OVERLAY.get("inference", {}),
                                                  "foreground_threshold": 0.4},
                                    "postprocess": {"steps": {"split_necks": {"enabled": True,
                                                                              "min_depth_mm": 1.5}}}}))
    r = run_cli("cv", "--manifest", manifest, "--out", cv, "--folds", ",".join(map(str, use)), "--config", cfg4,
                "--device", "cpu", "--no-progress", "--recalibrate")
    assert r.returncode == 0, r.stderr[-3000:]
    after = {k: torch.load(cv / f"fold_{k}" / "model.pt", weights_only=True) for k in use}
    for k in use:
        assert after[k]["epochs_trained"] == before[k]["epochs_trained"]
        torch.testing.assert_close(after[k]["state_dict"], before[k]["state_dict"])
        assert after[k]["operating_point"]["target_fp_per_scan"] == 4.0
        assert before[k]["operating_point"]["target_fp_per_scan"] == 1.0
        assert after[k]["config"]["inference"]["foreground_threshold"] == 0.4
        assert before[k]["config"]["inference"]["foreground_threshold"] == 0.5
        assert after[k]["config"]["postprocess"]["steps"]["split_necks"] == {"enabled": True, "min_depth_mm": 1.5}
        assert not before[k]["config"]["postprocess"]["steps"]["split_necks"]["enabled"]
    points = json.loads((cv / "cv.json").read_text())["operating_points"]
    for k in use:
        for part in points[str(k)]:
            rest = [scan for j in use for scan in after[j]["operating_point"]["candidates"]
                    if not (j == k and scan["case_id"] in part["cases"])]
            assert part["threshold"] == choose_threshold(scan_detections(rest), 4.0)["threshold"]
    made = {json.loads(p.read_text())["provenance"]["model_sha256"] for p in (cv / "predictions" / ".done").glob("*")}
    assert made == {hashlib.sha256((cv / f"fold_{k}" / "model.pt").read_bytes()).hexdigest() for k in use}
    assert sorted(json.loads((cv / "summary.json").read_text())["cases"]) == oof
    # nothing to recalibrate: one line, exit 2, nothing written
    r = run_cli("cv", "--manifest", manifest, "--out", tmp_path / "none", "--config", cfg4, "--recalibrate")
    assert r.returncode == 2 and "fold_" in r.stderr and "no trained fold model" in r.stderr, r.stderr
    assert not (tmp_path / "none").exists()
    # the folder is an ensemble: its mask is the one from the averaged fold probabilities
    test_image = tiny_dataset / data["test"][0]["image"]
    r = run_cli("infer", "--model", cv, "--input", test_image, "--out", tmp_path / "ens", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    from monai_pipeline.inference import Predictor

    ens = Predictor(cv, device="cpu")
    assert len(ens.networks) == len(use)
    data_in = ens.load(test_image)
    manual = sum(Predictor(cv / f"fold_{k}" / "model.pt", device="cpu").probabilities(data_in["image"])
                 for k in use) / len(use)
    torch.testing.assert_close(ens.probabilities(data_in["image"]), manual)
    mask = sitk.ReadImage(str(tmp_path / "ens" / f"{data['test'][0]['case_id']}.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(str(test_image)).GetSize()
    assert np.isin(sitk.GetArrayFromImage(mask), [0, 1]).all()


def test_cv_over_seeds_reports_mean_and_spread_and_their_ensemble(tiny_dataset, tmp_path):
    """``cv --seeds 2 --ensemble``: two cross-validations whose training seeds differ, and their figures' mean and
    sample standard deviation, recomputed here from each seed's own summary; then the seeds' ensemble, evaluated
    out of fold: each fold's held-out cases predicted by that fold's seed models averaged (none trained on them),
    at a point chosen without them, and the folder an ensemble of all four models for new data."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_OVERLAY, "training": {**TINY_OVERLAY["training"], "epochs": 2,
                                                                "val_interval": 1, "operating_fp_per_scan": 1.0}}))
    manifest = tiny_dataset / "manifest.json"
    data = json.loads(manifest.read_text())
    folds = sorted({e["fold"] for e in data["training"]})[:2]
    out = tmp_path / "cv"
    args = ["--manifest", manifest, "--out", out, "--folds", ",".join(map(str, folds)), "--config", cfg,
            "--device", "cpu", "--no-progress"]
    r = run_cli("cv", *args, "--ensemble")
    assert r.returncode == 2 and "--seeds 2 or more" in r.stderr and not out.exists(), r.stderr
    r = run_cli("cv", *args, "--seeds", 2, "--ensemble")
    assert r.returncode == 0, r.stderr[-3000:]
    seeds = json.loads((out / "seeds.json").read_text())
    dice = [json.loads((out / f"seed_{s}" / "summary.json").read_text())["metrics"]["dice"]["mean"] for s in (0, 1)]
    assert seeds["seeds"] == [0, 1]
    assert seeds["mean"]["dice_mean"] == pytest.approx(np.mean(dice))
    assert seeds["std"]["dice_mean"] == pytest.approx(np.std(dice, ddof=1))
    w = [torch.load(out / f"seed_{s}" / f"fold_{folds[0]}" / "model.pt", weights_only=True) for s in (0, 1)]
    assert w[0]["config"]["training"]["seed"] == 0 and w[1]["config"]["training"]["seed"] == 1
    assert "dice_mean: " in r.stdout and "+- " in r.stdout
    # the model file records the slice spacings it was trained on (the scans of every other fold), read here with
    # nibabel: the size of the voxel axis that points most along the head-foot axis
    import nibabel as nib

    slices = []
    for e in data["training"]:
        if e["fold"] != folds[0]:
            affine = nib.load(str(tiny_dataset / e["image"])).affine[:3, :3]
            slices.append(float(np.linalg.norm(affine[:, np.argmax(np.abs(affine[2]))])))
    assert w[0]["training_data"]["slice_spacing_mm"] == pytest.approx([min(slices), max(slices)])
    # the ensemble: out-of-fold cases only, each predicted by its fold's two seed models averaged
    ens = out / "ensemble"
    summary = json.loads((ens / "summary.json").read_text())
    assert sorted(summary["cases"]) == sorted(e["case_id"] for e in data["training"] if e["fold"] in folds)
    assert seeds["ensemble"]["dice_mean"] == pytest.approx(summary["metrics"]["dice"]["mean"])
    assert "the seeds' ensemble: dice_mean" in r.stdout and f"--model {ens}" in r.stdout
    from monai_pipeline.inference import Predictor

    for k in folds:
        index = json.loads((ens / f"fold_{k}" / "cv.json").read_text())
        members = [out / f"seed_{s}" / f"fold_{k}" / "model.pt" for s in (0, 1)]
        assert [(ens / f"fold_{k}" / m).resolve() for m in index["members"]] == [m.resolve() for m in members]
        assert index["ensemble_operating_point"]["target_fp_per_scan"] == 1.0
        sha = Predictor(ens / f"fold_{k}", device="cpu").model_sha256
        for e in (e for e in data["training"] if e["fold"] == k):
            made = json.loads((ens / "predictions" / ".done" / f"{e['case_id']}.json").read_text())["provenance"]
            assert made["model_sha256"] == sha and e["case_id"] not in made["trained_on"]
    # each group of a fold is scored at a point chosen on the other groups' ensemble candidates
    points = json.loads((ens / "cv.json").read_text())["operating_points"]
    stored = {k: json.loads((ens / f"fold_{k}" / "cv.json").read_text())["ensemble_operating_point"] for k in folds}
    for k in folds:
        for part in points[str(k)]:
            rest = [scan for j in folds for scan in stored[j]["candidates"]
                    if not (j == k and scan["case_id"] in part["cases"])]
            assert part["threshold"] == choose_threshold(scan_detections(rest), 1.0)["threshold"]
    # run again: the seeds' ensemble points are kept (their members did not change), nothing predicted again
    stamps = {k: (ens / f"fold_{k}" / "cv.json").stat().st_mtime_ns for k in folds}
    r = run_cli("cv", *args, "--seeds", 2, "--ensemble")
    assert r.returncode == 0, r.stderr[-3000:]
    assert stamps == {k: (ens / f"fold_{k}" / "cv.json").stat().st_mtime_ns for k in folds}
    assert json.loads((ens / "predictions" / "summary.json").read_text())["done"] == 0
    # another rate (or a recalibrated member): every fold's point is chosen again, the old predictions replaced
    from monai_pipeline.config import load_config
    from monai_pipeline.crossval import ensemble_seeds

    ensemble_seeds(manifest, out, load_config(cfg, {"training": {"operating_fp_per_scan": 2.0}}), [0, 1], folds,
                   "cpu", progress=False)
    for k in folds:
        index = json.loads((ens / f"fold_{k}" / "cv.json").read_text())
        assert index["ensemble_operating_point"]["target_fp_per_scan"] == 2.0
        assert index["chosen_with"]["operating_fp_per_scan"] == 2.0
    made = json.loads((ens / "predictions" / "summary.json").read_text())
    assert made["done"] == sum(e["fold"] == folds[-1] for e in data["training"]) and made["skipped"] == 0
    # new data: every seed's every fold
    assert len(Predictor(ens, device="cpu").networks) == 2 * len(folds)
    r = run_cli("infer", "--model", ens, "--input", tiny_dataset / data["test"][0]["image"], "--out",
                tmp_path / "new", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
