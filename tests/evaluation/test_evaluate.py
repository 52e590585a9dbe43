"""evaluate as users run it: held-out cases only, provenance, strict JSON, detection and per-size outputs."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import run_cli, tiny_model_file


def _refuse(token):
    raise ValueError(f"non-standard JSON constant {token}")


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, tiny_dataset, trained_tiny_model):
    """The trained tiny model's predictions of every case of its manifest (training cases included)."""
    out = tmp_path_factory.mktemp("pred")
    r = run_cli("infer", "--model", trained_tiny_model, "--manifest", tiny_dataset / "manifest.json", "--sections",
                "training,validation,test", "--out", out, "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


def test_training_cases_are_refused_naming_them(predicted, tiny_dataset, trained_tiny_model, tmp_path):
    import torch

    trained_on = torch.load(trained_tiny_model, weights_only=True)["trained_on"]
    assert trained_on, "the model file records the cases it was trained on"
    r = run_cli("evaluate", "--pred", predicted, "--manifest", tiny_dataset / "manifest.json", "--sections", "training",
                "--out", tmp_path / "rep")
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "predicted by a model trained on them" in line and trained_on[0] in line
    assert not (tmp_path / "rep").exists()
    r = run_cli("evaluate", "--pred", predicted, "--manifest", tiny_dataset / "manifest.json", "--sections", "training",
                "--include-training", "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text(), parse_constant=_refuse)
    assert sorted(summary["provenance"]["training_cases_included"]) == sorted(trained_on)
    # --include-training alone selects the training section beside the default ones
    r = run_cli("evaluate", "--pred", predicted, "--manifest", tiny_dataset / "manifest.json", "--include-training",
                "--out", tmp_path / "all")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "all" / "summary.json").read_text(), parse_constant=_refuse)
    assert set(trained_on) < set(summary["cases"])


def test_default_scores_held_out_cases_with_strict_json_and_detection(predicted, tiny_dataset, tmp_path):
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    held_out = sorted(e["case_id"] for e in manifest["validation"] + manifest["test"])
    r = run_cli("evaluate", "--pred", predicted, "--manifest", tiny_dataset / "manifest.json", "--out",
                tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    rep = tmp_path / "rep"
    summary = json.loads((rep / "summary.json").read_text(), parse_constant=_refuse)  # no NaN tokens
    assert sorted(summary["cases"]) == held_out and summary["metrics"]["dice"]["n"] == len(held_out)
    assert len(summary["provenance"]["model_sha256"]) == 1 and not summary["provenance"]["unverified"]
    assert set(summary["by_size"]) == {"<6", "6-10", "10-20", ">=20"}
    assert sum(b["n_nodules"] for b in summary["by_size"].values()) == summary["detection"]["n_nodules"] > 0
    for f in ("metrics.csv", "reference_lesions.csv", "froc.csv", "froc.png", "dice.png", "candidates.csv"):
        assert (rep / f).is_file(), f
    with open(rep / "candidates.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["seriesuid", "coordX", "coordY", "coordZ", "probability"] if rows else True
    assert "CPM" in r.stdout and "mean Dice" in r.stdout


def test_fold_selects_the_out_of_fold_training_cases(predicted, tiny_dataset, tmp_path):
    """A model trained with the manifest's validation list holds no fold out: --fold 0 names its cases."""
    r = run_cli("evaluate", "--pred", predicted, "--manifest", tiny_dataset / "manifest.json", "--fold", "0",
                "--out", tmp_path / "rep")
    assert r.returncode == 2 and "predicted by a model trained on them" in r.stderr


def test_second_infer_with_another_model_into_the_same_folder_exits_2(tiny_dataset, tmp_path):
    image = json.loads((tiny_dataset / "manifest.json").read_text())["test"][0]["image"]
    image = tiny_dataset / image
    first = tiny_model_file(tmp_path / "a.pt")
    second = tiny_model_file(tmp_path / "b.pt", {"training": {"seed": 5}})  # other weights' file, other SHA-256
    out = tmp_path / "out"
    r = run_cli("infer", "--model", first, "--input", image, "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    before = (out / f"{image.name[:-7]}.nii.gz").read_bytes()
    r = run_cli("infer", "--model", second, "--input", image, "--out", out, "--device", "cpu")
    assert r.returncode == 2 and "made by another model" in r.stderr and "--overwrite" in r.stderr
    assert (out / f"{image.name[:-7]}.nii.gz").read_bytes() == before
    r = run_cli("infer", "--model", first, "--input", image, "--out", out, "--device", "cpu", "--overlap", "0.5")
    assert r.returncode == 2 and "inference.overlap" in r.stderr
    r = run_cli("infer", "--model", second, "--input", image, "--out", out, "--device", "cpu", "--overwrite")
    assert r.returncode == 0, r.stderr


def _write(array, path, spacing=(1.0, 1.0, 1.0)):
    """``array`` (x, y, z) as a NIfTI file (SimpleITK's z, y, x order) at the origin, LPS axes."""
    import numpy as np
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def test_reference_components_below_3_mm_are_no_nodules(tmp_path):
    """A 6 mm nodule and two 1-voxel fragments of the label (a consensus mask's stray voxels): by default only the
    nodule is the reference; the predicted component and candidate on one fragment count neither way, the missed
    other fragment is not a missed nodule. ``min_nodule_mm=0`` counts all three as nodules."""
    import numpy as np
    import SimpleITK as sitk

    from monai_pipeline.evaluation import evaluate_folder
    from monai_pipeline.evaluation.evaluate import split_reference
    from monai_pipeline.io.geometry import Geometry

    shape = (40, 40, 30)
    ct = np.full(shape, -800, np.int16)
    label = np.zeros(shape, np.uint8)
    label[10:16, 10:16, 10:16] = 1  # the nodule: 6 mm across
    label[30, 30, 20] = 1  # fragment F1: predicted
    label[5, 33, 25] = 1  # fragment F2: missed
    ct[label > 0] = 40
    pred = np.zeros(shape, np.uint8)
    pred[10:16, 10:16, 10:16] = 1
    pred[30, 30, 20] = 1
    _write(ct, tmp_path / "images" / "c.nii.gz")
    _write(label, tmp_path / "labels" / "c.nii.gz")
    _write(pred, tmp_path / "pred" / "c.nii.gz")
    # candidates in mm, LPS: the grid's identity direction makes index (i, j, k) the point (i, j, k) mm
    (tmp_path / "pred" / "c_lesions.csv").write_text(
        "lesion,centroid_x_mm,centroid_y_mm,centroid_z_mm,score\n1,12.5,12.5,12.5,0.9\n2,30,30,20,0.95\n")
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"test": [{"case_id": "c", "image": "images/c.nii.gz", "label": "labels/c.nii.gz"}]}))

    geometry = Geometry.from_sitk(sitk.ReadImage(str(tmp_path / "labels" / "c.nii.gz")))
    standard, below, small = split_reference(label, geometry)
    assert standard.sum() == 216 and below.sum() == 2 and len(small) == 2
    assert all(f.radius_mm == 3.0 for f in small), "a point-sized finding gets the point radius"
    assert split_reference(label, geometry, 0.0)[0].sum() == 218

    res = evaluate_folder(tmp_path / "pred", tmp_path / "manifest.json", tmp_path / "rep", plot=False)
    assert res["reference_standard"] == {"min_nodule_mm": 3.0, "components_below_ignored": 2}
    det = res["detection"]
    assert det["n_nodules"] == 1 and det["n_ignored_candidates"] == 1 and det["n_candidates"] == 1
    assert res["lesion_sensitivity_pooled"] == 1.0 and res["lesion_false_positives_per_scan"] == 0.0
    assert res["metrics"]["dice"]["mean"] == 1.0
    with open(tmp_path / "rep" / "reference_lesions.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 1

    every = evaluate_folder(tmp_path / "pred", tmp_path / "manifest.json", tmp_path / "all", plot=False,
                            min_nodule_mm=0.0)
    assert every["detection"]["n_nodules"] == 3 and every["detection"]["n_ignored_candidates"] == 0
    assert every["lesion_sensitivity_pooled"] == 2 / 3
    assert every["metrics"]["dice"]["mean"] < 1.0


def test_candidates_come_from_the_candidate_table_else_the_lesion_table(tmp_path):
    """``evaluate`` ranks every candidate (``<id>_candidates.csv``, those below the operating point too); a
    prediction written without that table (older versions, other tools) is ranked by its lesion table."""
    from monai_pipeline.evaluation.evaluate import load_candidates

    (tmp_path / "a_lesions.csv").write_text("lesion,centroid_x_mm,centroid_y_mm,centroid_z_mm,score\n1,1,2,3,0.9\n")
    assert load_candidates(tmp_path, "a") == [((1.0, 2.0, 3.0), 0.9)]
    (tmp_path / "a_candidates.csv").write_text("centroid_x_mm,centroid_y_mm,centroid_z_mm,volume_mm3,score,"
                                               "network_score,kept\n1,2,3,50,0.9,0.99,1\n4,5,6,20,0.2,0.97,0\n")
    assert load_candidates(tmp_path, "a") == [((1.0, 2.0, 3.0), 0.9), ((4.0, 5.0, 6.0), 0.2)]
    assert load_candidates(tmp_path, "missing") == []
