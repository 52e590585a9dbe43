"""Reading CT: pydicom's real series and files, checked against pydicom's own header fields."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from monai_pipeline.errors import InputError
from monai_pipeline.io import ReadOptions, SimpleITKReader, read_ct, sitk_to_xyz_array

CT5N = "dicomdirtests/98892001/CT5N"
CT2 = "dicomdirtests/77654033/CT2"
CT2N = "dicomdirtests/98892001/CT2N"


def _headers(folder):
    return [pydicom.dcmread(str(p)) for p in sorted(folder.iterdir())]


def test_ct5n_geometry_and_slice_order_match_pydicom(pydicom_dir):
    folder = pydicom_dir / CT5N
    vol = read_ct(folder)
    g = vol.geometry
    dss = _headers(folder)
    iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    # independent ordering: position along the normal (instance numbers run the other way in this series)
    order = sorted(dss, key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), normal)))
    inst = [int(d.InstanceNumber) for d in order]
    assert inst == sorted(inst, reverse=True), "fixture premise: instance numbers oppose the position order"
    first = np.array(order[0].ImagePositionPatient, float)
    step = np.diff([np.dot(np.array(d.ImagePositionPatient, float), normal) for d in order])
    assert g.size == (int(dss[0].Columns), int(dss[0].Rows), len(dss))
    np.testing.assert_allclose(g.origin, first, atol=1e-4)
    np.testing.assert_allclose(g.spacing[:2], [float(dss[0].PixelSpacing[1]), float(dss[0].PixelSpacing[0])], atol=1e-6)
    np.testing.assert_allclose(g.spacing[2], step.mean(), atol=1e-4)
    np.testing.assert_allclose(np.array(g.direction).reshape(3, 3), np.stack([iop[:3], iop[3:], normal], 1), atol=1e-6)
    # voxel values are HU: stored * slope + intercept, slice by slice in position order
    arr = sitk_to_xyz_array(vol.image)
    for k, d in enumerate(order):
        hu = d.pixel_array.astype(float) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        np.testing.assert_array_equal(arr[:, :, k].T, hu)


def test_single_dicom_file_ct_small(pydicom_dir):
    path = pydicom_dir / "CT_small.dcm"
    ds = pydicom.dcmread(str(path))
    vol = read_ct(path)
    g = vol.geometry
    assert g.size == (ds.Columns, ds.Rows, 1)
    np.testing.assert_allclose(g.origin, [float(v) for v in ds.ImagePositionPatient], atol=1e-4)
    np.testing.assert_allclose(g.spacing[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])], atol=1e-6)
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(sitk_to_xyz_array(vol.image)[:, :, 0].T, hu)


def test_nonuniform_series_refused_then_resampled(pydicom_dir):
    folder = pydicom_dir / CT2
    with pytest.raises(InputError, match="non-uniform slice spacing") as exc:
        read_ct(folder)
    assert str(folder) in str(exc.value) and "\n" not in str(exc.value)
    vol = read_ct(folder, ReadOptions(nonuniform="resample"))
    dss = _headers(folder)
    z = sorted(float(d.ImagePositionPatient[2]) for d in dss)
    g = vol.geometry
    np.testing.assert_allclose(g.spacing[2], 1.25, atol=1e-3)
    np.testing.assert_allclose(g.origin[2], z[0], atol=1e-3)
    assert g.size[2] == int(round((z[-1] - z[0]) / 1.25)) + 1
    # the resampled volume keeps the real slices' values where a slice lies exactly on the grid
    last = max(dss, key=lambda d: float(d.ImagePositionPatient[2]))
    hu = last.pixel_array.astype(float) * float(last.RescaleSlope) + float(last.RescaleIntercept)
    np.testing.assert_allclose(sitk_to_xyz_array(vol.image)[:, :, -1].T, hu, atol=1e-3)


def test_mixed_orientations_refused(pydicom_dir):
    with pytest.raises(InputError, match="mixes slice orientations"):
        read_ct(pydicom_dir / CT2N)


def test_non_ct_refused_unless_forced(pydicom_dir):
    path = pydicom_dir / "MR_small.dcm"
    with pytest.raises(InputError, match="modality is MR, not CT"):
        read_ct(path)
    assert read_ct(path, ReadOptions(allow_non_ct=True)).geometry.size[2] == 1


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_ct(tmp_path / "nope.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="not (a )?readable"):
        read_ct(bad)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        read_ct(tmp_path / "x.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no DICOM image files"):
        read_ct(empty)


def test_several_series_choose_largest_ct_or_by_uid(tmp_path, pydicom_dir, caplog):
    import shutil

    for sub in (CT5N, CT2):
        for p in (pydicom_dir / sub).iterdir():
            shutil.copy(p, tmp_path / f"{sub[-4:].replace('/', '')}_{p.name}")
    # CT5N has 5 slices, CT2 has 4: the folder reads CT5N and warns about the other
    with caplog.at_level("WARNING"):
        vol = read_ct(tmp_path)
    assert vol.geometry.size[2] == 5
    assert "2 series found" in caplog.text
    uid = pydicom.dcmread(str(next((pydicom_dir / CT2).iterdir()))).SeriesInstanceUID
    vol2 = read_ct(tmp_path, ReadOptions(series_uid=uid, nonuniform="resample"))
    assert vol2.series_instance_uid == uid
    with pytest.raises(InputError, match="has no series with SeriesInstanceUID 1.2.3"):
        read_ct(tmp_path, ReadOptions(series_uid="1.2.3"))


def test_gantry_tilt_detected(tmp_path):
    from monai_pipeline.io.dicom_writer import write_ct_series

    img = sitk.Image([8, 8, 6], sitk.sitkInt16) - 1000  # air: a CT in HU
    img.SetSpacing((1.0, 1.0, 2.0))
    paths = write_ct_series(img, tmp_path / "tilt")
    # shear the positions: each slice moves 0.5 mm in y per 2 mm in z (14 degrees)
    for k, p in enumerate(sorted(paths, key=lambda p: float(pydicom.dcmread(str(p)).ImagePositionPatient[2]))):
        ds = pydicom.dcmread(str(p))
        pos = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [pos[0], pos[1] + 0.5 * k, pos[2]]
        ds.save_as(str(p))
    with pytest.raises(InputError, match="gantry tilt of 14.0 degrees"):
        read_ct(tmp_path / "tilt")
    assert read_ct(tmp_path / "tilt", ReadOptions(allow_gantry_tilt=True)).notes


def test_monai_loadimage_metadata(tmp_path):
    """LoadImage with the reader gives a RAS affine and (x, y, z) arrays as nibabel sees them."""
    import nibabel as nib
    from monai.transforms import LoadImage

    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (x, y, z)
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    d = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], float)  # rotated in-plane
    img.SetDirection(tuple(d.reshape(-1)))
    path = tmp_path / "a.nii.gz"
    sitk.WriteImage(img, str(path))
    out = LoadImage(reader=SimpleITKReader(), image_only=True)(str(path))
    nb = nib.load(str(path))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(nb.dataobj))
    np.testing.assert_allclose(np.asarray(out.affine), nb.affine, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.meta["original_affine"]), nb.affine, atol=1e-4)
    assert tuple(out.meta["spatial_shape"]) == (4, 5, 6)


def test_truncated_nifti_refused(tmp_path):
    """SimpleITK alone reads a truncated .nii.gz as zeros; the reader must refuse it."""
    img = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 1000, (20, 30, 40)).astype(np.int16))
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(img, str(good))
    raw = good.read_bytes()
    for name, data in (("half.nii.gz", raw[: len(raw) // 2]), ("tail.nii.gz", raw[:-4])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match="truncated|damaged"):
            read_ct(tmp_path / name)
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(img, str(plain))
    (tmp_path / "cut.nii").write_bytes(plain.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated: "):
        read_ct(tmp_path / "cut.nii")
    assert read_ct(good).geometry.size == (40, 30, 20)


def test_nifti_qform_sform_disagreement_follows_nibabels_rule(tmp_path):
    """Both forms valid but different: SimpleITK alone would mix them; the reader takes the sform (its code > 0),
    exactly the affine nibabel reports, spacing and origin alike."""
    import nibabel as nib

    from monai_pipeline.io import Geometry

    qform = np.array([[-0.7, 0, 0, 10.0], [0, -0.7, 0, 20.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
    sform = np.array([[-0.9, 0, 0, 55.0], [0, -0.8, 0, -12.0], [0, 0, 2.5, 80.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.full((10, 12, 6), -1000, np.int16), sform)
    img.header.set_qform(qform, code=1)
    img.header.set_sform(sform, code=2)
    nib.save(img, str(tmp_path / "two_forms.nii.gz"))
    vol = read_ct(tmp_path / "two_forms.nii.gz")
    np.testing.assert_allclose(Geometry.from_sitk(vol.image).ras_affine(),
                               nib.load(tmp_path / "two_forms.nii.gz").affine,
                               atol=1e-4)
    np.testing.assert_allclose(vol.image.GetSpacing(), (0.9, 0.8, 2.5), atol=1e-5)


def test_a_cd_or_pacs_export_folder_reads_as_its_series_alone(tmp_path, pydicom_dir):
    """Slices beside a DICOMDIR and the files an operating system or a PACS leaves (Thumbs.db, .DS_Store, a
    README) read as the series alone; a file that claims to be DICOM and is damaged is still refused."""
    import shutil

    from pydicom.data import get_testdata_file

    series = pydicom_dir / "dicomdirtests" / "98892001" / "CT5N"
    export = tmp_path / "export"
    shutil.copytree(series, export)
    shutil.copy(get_testdata_file("DICOMDIR"), export / "DICOMDIR")
    (export / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))
    (export / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (export / "README.txt").write_text("Exported by a PACS viewer.\n")
    alone, beside = read_ct(series), read_ct(export)
    assert beside.geometry.matches(alone.geometry)
    np.testing.assert_array_equal(sitk_to_xyz_array(beside.image), sitk_to_xyz_array(alone.image))
    (export / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    with pytest.raises(InputError, match="broken.dcm"):
        read_ct(export)
