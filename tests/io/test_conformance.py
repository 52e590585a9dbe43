"""Every kind of DICOM object the project writes passes dicom3tools' IOD validator (``dciodvfy``) with no errors: a
synthetic CT series (``synth --format dicom``), SEG with one segment, one per lesion and empty, RTSTRUCT with
lesions and empty. LIDC-shaped studies are checked in ``tests/lidc/test_synth.py``. Skipped, naming the install
command, where dicom3tools is missing (``.ci/run`` installs it)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from tests.helpers import dciodvfy_errors


@pytest.fixture(scope="module")
def synth_series(tmp_path_factory):
    from monai_pipeline.data.synth_dataset import synthesize
    from monai_pipeline.data.synthetic import SynthConfig

    root = tmp_path_factory.mktemp("conf")
    cfg = SynthConfig(matrix=48, spacing_xy=(6.0, 7.0), spacing_z=(4.0, 6.0), extent_z_mm=80.0, n_nodules=(2, 3),
                      diameter_mm=(10.0, 20.0))
    synthesize(root, 1, seed=4, fmt="both", cfg=cfg, progress=False)
    return root / "dicom" / "synth_004_000", root / "labels" / "synth_004_000.nii.gz"


def test_synthetic_ct_slices_conform(synth_series):
    folder, _ = synth_series
    files = sorted(folder.iterdir())
    for f in (files[0], files[len(files) // 2]):
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        assert ds.PatientPosition == "HFS" and ds.Modality == "CT"
        assert dciodvfy_errors(f) == []


def test_seg_and_rtstruct_conform(synth_series, tmp_path):
    pytest.importorskip("highdicom")
    from monai_pipeline.io import read_ct, read_label
    from monai_pipeline.io.dicom_seg import write_dicom_seg
    from monai_pipeline.io.geometry import sitk_to_xyz_array
    from monai_pipeline.io.rtstruct import write_rtstruct
    from monai_pipeline.postprocess import lesion_table

    folder, label_path = synth_series
    vol = read_ct(folder)
    files = [s.path for s in vol.slices]
    label = sitk_to_xyz_array(read_label(label_path).image)
    rows, labels = lesion_table(label, vol.geometry, return_labels=True)
    assert len(rows) >= 2
    empty = np.zeros_like(labels)
    written = [write_dicom_seg(label, files, tmp_path / "single.dcm"),
               write_dicom_seg(labels, files, tmp_path / "lesion.dcm", per_lesion=True,
                               volumes_mm3={r["lesion"]: r["volume_mm3"] for r in rows}),
               write_dicom_seg(empty, files, tmp_path / "empty_seg.dcm", per_lesion=True),
               write_rtstruct(labels, vol.geometry, files, tmp_path / "rt.dcm"),
               write_rtstruct(empty, vol.geometry, files, tmp_path / "empty_rt.dcm")]
    for path in written:
        assert dciodvfy_errors(path) == [], path.name
