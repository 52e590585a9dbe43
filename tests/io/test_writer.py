"""Atomic writing and masks that keep the reference geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from monai_pipeline.io import Geometry, atomic_write_text, write_mask


def test_write_mask_geometry_and_dtype(tmp_path):
    d = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    geom = Geometry((5, 6, 7), (0.7, 0.8, 2.0), (1.5, -2.5, 100.25), tuple(d.reshape(-1)))
    mask = np.zeros(geom.size, np.uint8)
    mask[1, 2, 3] = 1
    path = write_mask(mask, geom, tmp_path / "m.nii.gz")
    img = sitk.ReadImage(str(path))
    assert img.GetPixelID() == sitk.sitkUInt8
    assert Geometry.from_sitk(img).matches(geom, atol_mm=1e-4)
    assert sitk.GetArrayFromImage(img)[3, 2, 1] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary files left behind"


def test_write_mask_rejects_wrong_shape(tmp_path):
    geom = Geometry((5, 6, 7), (1, 1, 1), (0, 0, 0), tuple(np.eye(3).reshape(-1)))
    with pytest.raises(ValueError, match="mask shape must equal"):
        write_mask(np.zeros((5, 6, 8)), geom, tmp_path / "m.nii.gz")
    assert not list(tmp_path.iterdir())


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    from monai_pipeline.io.writer import atomic_write

    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_geometry_ras_affine_roundtrip():
    d = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    geom = Geometry((5, 6, 7), (0.7, 0.8, 2.0), (1.5, -2.5, 100.25), tuple(d.reshape(-1)))
    back = Geometry.from_ras_affine(geom.ras_affine(), geom.size)
    assert back.matches(geom, atol_mm=1e-9)
