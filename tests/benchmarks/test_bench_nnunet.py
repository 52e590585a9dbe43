"""bench_nnunet's own parts (nnU-Net itself is not installed in the suite): the raw dataset it writes, and how
nnU-Net's outputs become what ``evaluate`` scores (grid, axis order of the probabilities, lesion scores)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monai_pipeline.arrays import label_components
from monai_pipeline.data.manifest import load_manifest
from monai_pipeline.evaluation.evaluate import evaluate_folder
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_nnunet  # noqa: E402


def test_convert_writes_nnunet_raw_dataset_with_the_pipelines_split(tmp_path, tiny_dataset):
    manifest = tiny_dataset / "manifest.json"
    split = bench_nnunet.convert(manifest, tmp_path, ("test",))
    sections = {s: [e["case_id"] for e in load_manifest(manifest, s)] for s in ("training", "validation", "test")}
    assert (split["train"], split["val"], split["test"]) == (sections["training"], sections["validation"],
                                                             sections["test"])
    folder = tmp_path / bench_nnunet.DATASET
    tr = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert tr == sorted(f"{c}_0000.nii.gz" for c in split["train"] + split["val"])
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [f"{c}_0000.nii.gz" for c in split["test"]]
    first = load_manifest(manifest, "training")[0]
    assert (folder / "imagesTr" / f"{first['case_id']}_0000.nii.gz").resolve() == Path(first["image"]).resolve()
    assert (folder / "labelsTr" / f"{first['case_id']}.nii.gz").resolve() == Path(first["label"]).resolve()
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["numTraining"] == len(tr) and ds["labels"] == {"background": 0, "nodule": 1}


def test_nnunet_outputs_scored_on_the_input_grid_with_per_component_scores(tmp_path, tiny_dataset):
    """A fake nnU-Net output (the reference mask, probabilities in SimpleITK's (z, y, x) order with a different
    value per component) must score Dice 1 and give each lesion its own component's probability."""
    manifest = tiny_dataset / "manifest.json"
    entry = load_manifest(manifest, "test")[0]
    cid, label = entry["case_id"], sitk.ReadImage(entry["label"])
    raw = tmp_path / "raw"
    raw.mkdir()
    sitk.WriteImage(label, str(raw / f"{cid}.nii.gz"))
    zyx = sitk.GetArrayFromImage(label) > 0
    comps, n = label_components(zyx, 26)
    assert n >= 2
    fg = np.zeros(zyx.shape, np.float32)
    for k in range(1, n + 1):
        fg[comps == k] = 0.5 + k / (2 * n + 2)  # distinct, in (0.5, 1)
    np.savez_compressed(raw / f"{cid}.npz", probabilities=np.stack([1 - fg, fg]))
    pred = bench_nnunet.to_pipeline_layout(raw, [cid], manifest, tmp_path / "pred")
    with open(pred / f"{cid}_lesions.csv") as fh:
        scores = sorted(float(r["score"]) for r in csv.DictReader(fh))
    assert np.allclose(scores, sorted(0.5 + k / (2 * n + 2) for k in range(1, n + 1)), atol=1e-5)
    summary = evaluate_folder(pred, manifest, tmp_path / "report", sections=["test"], plot=False)
    assert bench_nnunet.headline(summary)["dice"] == 1.0
    assert bench_nnunet.headline(summary)["fp_per_scan"] == 0.0
    assert "| nnU-Net v2 | x |" in bench_nnunet.table({"x": {"method": "nnU-Net v2",
                                                             "scores": bench_nnunet.headline(summary)}})
