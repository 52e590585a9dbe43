"""bench_lesion_score's bookkeeping: candidates matched to the reference nodules (LUNA16 hit rule) with their
elongation split by hit and miss, and the counts at an operating point. (The score kinds themselves are tested in
tests/inference/test_export.py; the prediction and evaluation it calls are the pipeline's own.)"""

from __future__ import annotations

import csv
import shutil

import pytest

from tests.helpers import load_benchmark


def _bench():
    return load_benchmark("bench_lesion_score")


def test_candidates_matched_and_split_by_hit_and_miss(tiny_dataset, tmp_path):
    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.evaluation.evaluate import read_binary_label
    from monai_pipeline.io.geometry import sitk_to_xyz_array
    from monai_pipeline.postprocess import LESION_FIELDS, lesion_table, write_lesion_csv

    entry = load_manifest(tiny_dataset / "manifest.json", "test")[0]
    ref = read_binary_label(entry["label"])
    rows = lesion_table(sitk_to_xyz_array(ref.image), ref.geometry)
    assert len(rows) >= 2
    far = {**rows[0], "lesion": len(rows) + 1, "centroid_x_mm": rows[0]["centroid_x_mm"] + 500.0,
           "elongation": 9.0}
    cands = [{**r, "score": 0.9 - 0.1 * k} for k, r in enumerate(rows[1:])] + [{**far, "score": 0.95}]
    shutil.copy(entry["label"], tmp_path / f"{entry['case_id']}.nii.gz")  # the reference as the predicted mask
    write_lesion_csv(cands, tmp_path / f"{entry['case_id']}_lesions.csv")
    with open(tmp_path / f"{entry['case_id']}_lesions.csv") as fh:
        assert tuple(next(csv.reader(fh))) == LESION_FIELDS

    scans, shape = _bench().matched_scans(tmp_path, [entry])
    (scan,) = scans
    assert scan.fp_scores == [0.95], "the candidate 500 mm away is the one false positive"
    assert scan.nodule_scores[0] is None and all(s is not None for s in scan.nodule_scores[1:])
    assert shape["miss"] == [9.0] and shape["hit"] == [r["elongation"] for r in rows[1:]]
    assert _bench().at_threshold(scans, 0.9) == (1.0, pytest.approx(1 / len(rows)))


def test_counts_at_a_threshold():
    from monai_pipeline.evaluation.detection import ScanDetections

    scans = [ScanDetections("a", [0.9, None], [0.95, 0.5]), ScanDetections("b", [0.6], [0.7, 0.3])]
    assert _bench().at_threshold(scans, 0.6) == (1.0, pytest.approx(2 / 3))
    assert _bench().at_threshold(scans, None) == (2.0, pytest.approx(2 / 3))


def test_fragments_under_3mm_are_neither_nodules_nor_false_positives(tiny_dataset, tmp_path):
    """The reference standard is evaluate's: a one-voxel label fragment is no nodule, and a candidate on it is
    ignored, not counted as a false positive."""
    import SimpleITK as sitk

    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.evaluation.evaluate import read_binary_label
    from monai_pipeline.io.geometry import sitk_to_xyz_array
    from monai_pipeline.postprocess import lesion_table, write_lesion_csv

    entry = load_manifest(tiny_dataset / "manifest.json", "test")[0]
    label = sitk.ReadImage(entry["label"])
    arr = sitk.GetArrayFromImage(label)
    assert not arr[:4, :4, :4].any()
    n_nodules = len(lesion_table(sitk_to_xyz_array(read_binary_label(entry["label"]).image),
                                 read_binary_label(entry["label"]).geometry))
    arr[2, 2, 2] = 1  # a fragment of one voxel in a corner
    fragmented = sitk.GetImageFromArray(arr)
    fragmented.CopyInformation(label)
    sitk.WriteImage(fragmented, tmp_path / "label.nii.gz")
    ref = read_binary_label(tmp_path / "label.nii.gz")
    rows = lesion_table(sitk_to_xyz_array(ref.image), ref.geometry)
    assert len(rows) == n_nodules + 1
    fragment = min(rows, key=lambda r: r["volume_mm3"])
    preds = tmp_path / "pred"
    preds.mkdir()
    shutil.copy(entry["label"], preds / f"{entry['case_id']}.nii.gz")
    write_lesion_csv([{**fragment, "score": 0.99}], preds / f"{entry['case_id']}_lesions.csv")
    (scan,), _ = _bench().matched_scans(preds, [{**entry, "label": str(tmp_path / "label.nii.gz")}])
    assert len(scan.nodule_scores) == n_nodules and scan.fp_scores == [] and scan.ignored == 1
