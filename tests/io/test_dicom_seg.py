"""DICOM SEG output: read back with highdicom and pydicom, every frame references the right source slice, and the
segment's pixels lie on the same physical positions as the NIfTI mask (positions from nibabel's affine)."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.conftest import physical_points_lps
from tests.helpers import run_cli

hd = pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A synthetic series written feet first (not axial head-first), with random file names."""
    from monai_pipeline.data.synthetic import SynthConfig, generate_case
    from monai_pipeline.io.dicom_writer import write_ct_series

    d = tmp_path_factory.mktemp("segsrc")
    case = generate_case(5, SynthConfig(matrix=64, extent_z_mm=30.0, n_nodules=(2, 2), diameter_mm=(6, 10)),
                         orientation="axial_ff")
    write_ct_series(case.image, d / "series")
    return d / "series"


def _seg_points_lps(seg_path) -> tuple[np.ndarray, list[str]]:
    """Foreground pixel positions (mm, LPS) of a SEG from its own per-frame geometry (pydicom only), and each
    frame's referenced source SOP instance."""
    ds = pydicom.dcmread(str(seg_path))
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)  # row spacing, column spacing
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    pts, refs = [], []
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pos = np.asarray([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient])
        refs.append(str(fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID))
        r, c = np.nonzero(frames[i])
        pts.append(pos + np.outer(c * dc, iop[:3]) + np.outer(r * dr, iop[3:]))
    return (np.concatenate(pts) if pts else np.zeros((0, 3))), refs


def test_seg_frames_reference_their_slices_and_match_the_nifti_mask(series, tmp_path):
    from monai_pipeline.io import read_ct, write_mask
    from monai_pipeline.io.dicom_seg import write_dicom_seg

    vol = read_ct(series)
    mask = np.zeros(vol.geometry.size, np.uint8)
    mask[20:30, 12:22, 3:7] = 1
    mask[40:44, 40:50, 9:11] = 1
    files = [s.path for s in vol.slices]
    seg_path = write_dicom_seg(mask, files, tmp_path / "case_seg.dcm", {"model_sha256": "ab" * 32})
    write_mask(mask, vol.geometry, tmp_path / "case.nii.gz")
    # highdicom reads it back: one "Nodule" segment, the algorithm and model hash recorded
    seg = hd.seg.segread(str(seg_path))
    desc = seg.get_segment_description(1)
    assert desc.segment_label == "Nodule" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
    assert seg.FrameOfReferenceUID == pydicom.dcmread(files[0]).FrameOfReferenceUID
    assert "ab" * 6 in seg.SeriesDescription
    # pydicom: every frame references the source slice at its own position
    positions = {str(d.SOPInstanceUID): np.asarray([float(v) for v in d.ImagePositionPatient])
                 for d in (pydicom.dcmread(f, stop_before_pixels=True) for f in files)}
    ds = pydicom.dcmread(str(seg_path))
    for fg in ds.PerFrameFunctionalGroupsSequence:
        ref = str(fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        pos = np.asarray([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient])
        np.testing.assert_allclose(positions[ref], pos, atol=1e-3)
    # the same physical voxels as the NIfTI mask, voxel for voxel
    seg_pts, _ = _seg_points_lps(seg_path)
    nii_pts = physical_points_lps(tmp_path / "case.nii.gz")
    assert len(seg_pts) == len(nii_pts) == int(mask.sum())
    _same_points(seg_pts, nii_pts)


def _same_points(a: np.ndarray, b: np.ndarray, tol_mm: float = 0.01) -> None:
    """Two point sets are the same voxels: equal counts, each point's nearest partner within ``tol_mm``
    (the NIfTI header holds its geometry in float32)."""
    from scipy.spatial import cKDTree

    assert len(a) == len(b)
    if len(a):
        assert cKDTree(b).query(a)[0].max() < tol_mm and cKDTree(a).query(b)[0].max() < tol_mm


def test_empty_prediction_still_writes_a_valid_seg(series, tmp_path):
    from monai_pipeline.io import read_ct
    from monai_pipeline.io.dicom_seg import write_dicom_seg

    vol = read_ct(series)
    path = write_dicom_seg(np.zeros(vol.geometry.size, np.uint8), [s.path for s in vol.slices], tmp_path / "e.dcm")
    seg = hd.seg.segread(str(path))
    assert int(seg.NumberOfFrames) == vol.geometry.size[2] and not pydicom.dcmread(str(path)).pixel_array.any()


def test_infer_format_both_and_refusal_for_nifti(series, tmp_path, trained_tiny_model):
    r = run_cli("infer", "--model", trained_tiny_model, "--input", series, "--out", tmp_path / "out", "--device", "cpu",
                "--format", "both")
    assert r.returncode == 0, r.stderr
    seg_pts, _ = _seg_points_lps(tmp_path / "out" / "series_seg.dcm")
    nii_pts = physical_points_lps(tmp_path / "out" / "series.nii.gz")
    _same_points(seg_pts, nii_pts)
    assert json.loads((tmp_path / "out" / ".done" / "series.json").read_text())["format"] == "both"
    nifti = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "out" / "series.nii.gz")) * 0 - 1000, str(nifti))
    r = run_cli("infer", "--model", trained_tiny_model, "--input", nifti, "--out", tmp_path / "o2", "--device", "cpu",
                "--format", "dicom-seg")
    assert r.returncode == 2 and "needs a DICOM series folder" in r.stderr and not (tmp_path / "o2").exists()
