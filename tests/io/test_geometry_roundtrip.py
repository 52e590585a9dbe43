"""Geometry is sacred: synthetic series in several orientations, written as DICOM and NIfTI, read back,
carried through the network-space preprocessing and back, written as NIfTI masks, and checked in mm against
the generator's ground truth with nibabel (independent of SimpleITK)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from monai_pipeline.data.synth_dataset import _dicom_safe
from monai_pipeline.data.synthetic import SynthConfig, generate_case
from monai_pipeline.io import Geometry, read_ct, read_label, sitk_to_xyz_array, write_mask
from monai_pipeline.io.dicom_writer import write_ct_series
from tests.conftest import physical_points_lps

CFG = SynthConfig(matrix=80, spacing_xy=(0.7, 0.9), spacing_z=(1.5, 2.5), extent_z_mm=50.0, n_nodules=(2, 3),
                  diameter_mm=(7.0, 12.0))


def _check_nodules(points_lps: np.ndarray, labels_case, spacing) -> None:
    """Every nodule centre lies within one voxel diagonal of a mask voxel, and every mask voxel lies within
    the nodule's reach (diameter + one voxel) of some centre."""
    diag = float(np.linalg.norm(spacing))
    centres = np.array([n.center_mm for n in labels_case.nodules])
    for n in labels_case.nodules:
        d = np.linalg.norm(points_lps - np.asarray(n.center_mm), axis=1)
        assert d.min() <= diag, f"no mask voxel near nodule centre {n.center_mm}"
    reach = np.array([n.diameter_mm for n in labels_case.nodules]) + diag
    dist = np.linalg.norm(points_lps[:, None, :] - centres[None], axis=2)
    assert np.all((dist <= reach[None]).any(axis=1)), "mask voxels far from every nodule"


@pytest.mark.parametrize("orientation", ["axial_hf", "axial_ff", "prone", "flipped_rows", "oblique"])
def test_dicom_series_roundtrip(tmp_path, orientation):
    case = _dicom_safe(generate_case(11, CFG, orientation=orientation))
    assert case.nodules
    paths = write_ct_series(case.image, tmp_path / "series", rng=np.random.default_rng(0))
    vol = read_ct(tmp_path / "series")
    g_in, g_read = Geometry.from_sitk(case.image), vol.geometry
    assert g_read.matches(g_in, atol_mm=1e-4), (g_read, g_in)
    # slice k of the volume is the file whose ImagePositionPatient pydicom reports at origin + k * step
    d = g_read.direction_matrix
    for k in (0, g_read.size[2] // 2, g_read.size[2] - 1):
        expect = np.asarray(g_read.origin) + d[:, 2] * g_read.spacing[2] * k
        ds = pydicom.dcmread(str(paths[k]), stop_before_pixels=True)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expect, atol=1e-4)
    np.testing.assert_array_equal(sitk_to_xyz_array(vol.image), sitk_to_xyz_array(case.image))
    # a mask written for the series overlays the ground truth in physical space
    out = write_mask(sitk_to_xyz_array(case.label), g_read, tmp_path / "mask.nii.gz")
    _check_nodules(physical_points_lps(out), case, g_read.spacing)


@pytest.mark.parametrize("orientation", ["axial_hf", "axial_ff", "left_handed", "oblique"])
def test_network_space_roundtrip(tmp_path, orientation):
    """Input grid -> RAS/target spacing/body crop (the model's preprocessing) -> back to the input grid."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, EnsureChannelFirstd

    from monai_pipeline.config import load_config
    from monai_pipeline.inference import resample_to_grid
    from monai_pipeline.io.reader import CTVolume, volume_meta
    from monai_pipeline.transforms.pipeline import preprocess_transforms

    case = generate_case(5, CFG, orientation=orientation)
    sitk.WriteImage(case.image, str(tmp_path / "img.nii.gz"))
    sitk.WriteImage(case.label, str(tmp_path / "lab.nii.gz"))
    vol = read_ct(tmp_path / "img.nii.gz")
    lab = read_label(tmp_path / "lab.nii.gz")
    cfg = load_config({"preprocessing": {"target_spacing": [1.3, 1.1, 1.7]}})
    pre = Compose([EnsureChannelFirstd(keys=["image", "label"], channel_dim="no_channel"),
                   *preprocess_transforms(cfg, ("image", "label"))])
    data = pre({"image": MetaTensor(torch.from_numpy(sitk_to_xyz_array(vol.image).astype(np.float32)),
                                    meta=volume_meta(vol)),
                "label": MetaTensor(torch.from_numpy(sitk_to_xyz_array(lab.image).astype(np.float32)),
                                    meta=volume_meta(CTVolume(lab.image, "lab")))})
    net_label = data["label"][0].numpy().astype(np.uint8)
    assert net_label.any()
    back = resample_to_grid(net_label, np.asarray(data["label"].affine), vol.geometry)
    out = write_mask(sitk_to_xyz_array(back), vol.geometry, tmp_path / "mask.nii.gz")
    pts = physical_points_lps(out)
    _check_nodules(pts, case, vol.geometry.spacing)
    # and voxel-wise agreement with the truth, up to the two nearest-neighbour resamplings
    truth = sitk_to_xyz_array(case.label) > 0
    got = sitk_to_xyz_array(back) > 0
    dice = 2 * np.sum(truth & got) / (truth.sum() + got.sum())
    assert dice > 0.75, dice
