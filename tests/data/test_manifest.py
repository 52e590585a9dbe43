"""Manifests: decathlon format, relative paths, patient-level folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from monai.data import load_decathlon_datalist

from monai_pipeline.data.manifest import assign_folds, build_manifest, load_manifest, split_for_fold
from monai_pipeline.errors import InputError


def _img(path):
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkInt16), str(path))


def test_build_manifest_patient_level_folds(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cases = [f"P{p:02d}_s{s}" for p in range(7) for s in range(1 + p % 2)]
    for c in cases:
        _img(tmp_path / "images" / f"{c}.nii.gz")
        _img(tmp_path / "labels" / f"{c}.nii.gz")
    out = build_manifest(tmp_path / "images", tmp_path / "labels", tmp_path / "m" / "manifest.json", n_folds=3,
                         test_fraction=0.3, patient_id_sep="_")
    data = json.loads(out.read_text())
    assert set(data) >= {"training", "validation", "test"}
    assert not data["training"][0]["image"].startswith("/"), "paths are relative to the manifest"
    folds: dict[str, set] = {}
    for e in data["training"]:
        folds.setdefault(e["patient_id"], set()).add(e["fold"])
    assert all(len(f) == 1 for f in folds.values()), "no patient in two folds"
    test_patients = {e["patient_id"] for e in data["test"]}
    assert test_patients and not test_patients & set(folds), "no patient in both test and training"
    assert len(data["training"]) + len(data["test"]) == len(cases)
    dl = load_decathlon_datalist(str(out), data_list_key="training")
    assert all((tmp_path / "images").samefile(__import__("pathlib").Path(d["image"]).parent) for d in dl)
    train, val = split_for_fold(out, fold=1)
    assert {e["fold"] for e in val} == {1} and 1 not in {e["fold"] for e in train}


def test_assign_folds_balanced_and_deterministic():
    a = assign_folds([f"p{i}" for i in range(10)], 5)
    assert a == assign_folds([f"p{i}" for i in reversed(range(10))], 5)
    assert sorted(np.bincount(list(a.values()))) == [2, 2, 2, 2, 2]


def test_manifest_errors(tmp_path):
    with pytest.raises(InputError, match="manifest does not exist"):
        load_manifest(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_manifest(bad)
    (tmp_path / "images").mkdir()
    _img(tmp_path / "images" / "a.nii.gz")
    (tmp_path / "labels").mkdir()
    with pytest.raises(InputError, match="has no label named a"):
        build_manifest(tmp_path / "images", tmp_path / "labels", tmp_path / "m.json")
