"""What a user's inputs become: a study tree searched with ``--recursive`` (one case per CT series, named by
patient/study/series, ``--series-uid`` to keep one), and a DICOMDIR given as the input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from monai_pipeline.cli import main
from monai_pipeline.errors import InputError
from monai_pipeline.inference.inputs import cases_from_inputs
from monai_pipeline.io.dicom_writer import write_ct_series
from monai_pipeline.io.reader import ReadOptions, read_ct


def _volume(size: tuple[int, int, int], seed: int) -> sitk.Image:
    rng = np.random.default_rng(seed)
    arr = rng.normal(-700, 50, size[::-1]).astype(np.float32)
    arr[size[2] // 3: 2 * size[2] // 3, 10:20, 10:20] = 40.0  # a soft-tissue block
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    return img


@pytest.fixture(scope="module")
def study_tree(tmp_path_factory) -> dict:
    """Two patients: one series in its own folder; and a folder holding a CT and an MR series side by side."""
    root = tmp_path_factory.mktemp("tree") / "export"
    a = write_ct_series(_volume((32, 32, 12), 1), root / "PA" / "study1" / "ct", patient_id="PA",
                        rng=np.random.default_rng(1))
    b = write_ct_series(_volume((30, 28, 10), 2), root / "PB" / "mixed", patient_id="PB",
                        rng=np.random.default_rng(2))
    write_ct_series(_volume((30, 28, 8), 3), root / "PB" / "mixed", patient_id="PB", modality="MR",
                    rng=np.random.default_rng(3))
    (root / "PB" / "Thumbs.db").write_bytes(b"\x00" * 64)
    return {"root": root, "a": a, "b": b}


def test_recursive_finds_each_ct_series_named_by_patient_study_series(study_tree):
    cases = cases_from_inputs([str(study_tree["root"])], recursive=True)
    assert [c.case_id.split("_")[0] for c in cases] == ["PA", "PB"]
    assert len({c.case_id for c in cases}) == 2 and all(c.series_uid for c in cases)
    for case, files in zip(cases, (study_tree["a"], study_tree["b"]), strict=True):
        vol = read_ct(case.path, ReadOptions(series_uid=case.series_uid))
        assert vol.image.GetSize() == sitk.ReadImage([str(f) for f in files]).GetSize()
    with_mr = cases_from_inputs([str(study_tree["root"])], recursive=True, allow_non_ct=True)
    assert len(with_mr) == 3
    one = cases_from_inputs([str(study_tree["root"])], recursive=True, series_uid=cases[1].series_uid)
    assert one == [cases[1]]
    with pytest.raises(InputError, match="has no series with SeriesInstanceUID 1.2.3"):
        cases_from_inputs([str(study_tree["root"])], recursive=True, series_uid="1.2.3")


def test_infer_recursive_writes_one_mask_per_series_in_its_geometry(study_tree, tmp_path):
    from tests.integration.golden.golden_outputs import MODEL

    out = tmp_path / "out"
    assert main(["infer", "--model", str(MODEL), "--input", str(study_tree["root"]), "--recursive", "--out",
                 str(out), "--workers", "1", "--no-progress"]) == 0
    masks = sorted(out.glob("*.nii.gz"))
    assert [m.name.split("_")[0] for m in masks] == ["PA", "PB"]
    for mask, files in zip(masks, (study_tree["a"], study_tree["b"]), strict=True):
        ref = sitk.ReadImage([str(f) for f in sorted(files, key=lambda f: sitk.ReadImage(str(f)).GetOrigin()[2])])
        got = sitk.ReadImage(str(mask))
        assert got.GetSize() == ref.GetSize() and np.allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    # without --recursive, the tree is one folder holding no DICOM files itself: refused, naming --recursive
    assert main(["infer", "--model", str(MODEL), "--input", str(study_tree["root"]), "--out", str(tmp_path / "x")]) == 2


def test_a_dicomdir_input_reads_the_series_under_its_folder(study_tree, tmp_path):
    export = tmp_path / "cd"
    shutil.copytree(study_tree["root"], export)
    shutil.copy(get_testdata_file("DICOMDIR"), export / "DICOMDIR")
    cases = cases_from_inputs([str(export / "DICOMDIR")])
    assert [c.case_id.split("_")[0] for c in cases] == ["PA", "PB"]
    assert all(Path(c.path).is_relative_to(export) for c in cases)
