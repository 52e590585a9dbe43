"""``manifest`` reads the layouts other tools write: an nnU-Net v2 raw dataset and a Decathlon task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from monai_pipeline.data.manifest import load_manifest
from tests.helpers import run_cli


def _nifti(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), value, np.int16)), str(path))


def _nnunet(root: Path, n_train: int = 4, channels: dict | None = None) -> Path:
    for i in range(n_train):
        _nifti(root / "imagesTr" / f"lung_{i:03d}_0000.nii.gz", -500)
        _nifti(root / "labelsTr" / f"lung_{i:03d}.nii.gz", 0)
    _nifti(root / "imagesTs" / "lung_900_0000.nii.gz", -500)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": channels or {"0": "CT"}, "labels": {"background": 0, "nodule": 1},
        "numTraining": n_train, "file_ending": ".nii.gz"}))
    return root


def test_nnunet_raw_dataset(tmp_path):
    ds = _nnunet(tmp_path / "Dataset501_Lung")
    r = run_cli("manifest", "--images", ds, "--out", tmp_path / "m.json", "--folds", 2)
    assert r.returncode == 0, r.stderr
    train, test = load_manifest(tmp_path / "m.json", "training"), load_manifest(tmp_path / "m.json", "test")
    assert sorted(e["case_id"] for e in train) == [f"lung_{i:03d}" for i in range(4)]
    for e in train:
        assert Path(e["image"]).name == f"{e['case_id']}_0000.nii.gz"
        assert Path(e["label"]) == (ds / "labelsTr" / f"{e['case_id']}.nii.gz").resolve()
    assert {e["fold"] for e in train} == {0, 1}
    assert [e["case_id"] for e in test] == ["lung_900"] and "label" not in test[0]


def test_nnunet_dataset_refusals(tmp_path):
    ds = _nnunet(tmp_path / "two", channels={"0": "CT", "1": "PET"})
    r = run_cli("manifest", "--images", ds, "--out", tmp_path / "m.json")
    assert r.returncode == 2 and "2 input channels" in r.stderr and not (tmp_path / "m.json").exists()
    ds = _nnunet(tmp_path / "nolabel")
    (ds / "labelsTr" / "lung_002.nii.gz").unlink()
    r = run_cli("manifest", "--images", ds, "--out", tmp_path / "m.json")
    assert r.returncode == 2 and "lung_002_0000.nii.gz: has no label labelsTr/lung_002.nii.gz" in r.stderr


@pytest.mark.parametrize("as_dicts", [False, True])
def test_decathlon_task(tmp_path, as_dicts):
    root = tmp_path / "Task06_Lung"
    for i in (1, 2, 3):
        _nifti(root / "imagesTr" / f"lung_{i:03d}.nii.gz", -500)
        _nifti(root / "labelsTr" / f"lung_{i:03d}.nii.gz", 0)
    _nifti(root / "imagesTs" / "lung_010.nii.gz", -500)
    test = [{"image": "./imagesTs/lung_010.nii.gz"}] if as_dicts else ["./imagesTs/lung_010.nii.gz"]
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "cancer"}, "test": test,
        "training": [{"image": f"./imagesTr/lung_{i:03d}.nii.gz", "label": f"./labelsTr/lung_{i:03d}.nii.gz"}
                     for i in (1, 2, 3)]}))
    r = run_cli("manifest", "--images", root, "--out", tmp_path / "m.json", "--folds", 3)
    assert r.returncode == 0, r.stderr
    train = load_manifest(tmp_path / "m.json", "training")
    assert sorted(e["case_id"] for e in train) == ["lung_001", "lung_002", "lung_003"]
    assert all(Path(e["label"]).parent.name == "labelsTr" for e in train)
    assert [e["case_id"] for e in load_manifest(tmp_path / "m.json", "test")] == ["lung_010"]
