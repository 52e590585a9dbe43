"""Array transforms: CT normalisation, the crop selectors, foreground statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_pipeline.transforms.array import CTNormalize, HUThreshold, LungSelect, foreground_intensity_stats


@pytest.mark.parametrize("kind", [np.asarray, torch.as_tensor])
def test_ct_normalize_clips_then_zscores(kind):
    img = kind(np.array([[[[-1200.0, -100.0, 40.0, 900.0]]]], dtype=np.float32))
    out = CTNormalize(mean=0.0, std=100.0, lower=-1000.0, upper=500.0)(img)
    np.testing.assert_allclose(np.asarray(out).ravel(), [-10.0, -1.0, 0.4, 5.0], rtol=1e-6)
    with pytest.raises(ValueError, match="std must be > 0"):
        CTNormalize(0.0, 0.0, -1.0, 1.0)


def _chest(shape=(40, 30, 6)):
    """Air around a body ellipse holding two air-filled 'lungs' (HU), channel first."""
    x, y = np.ogrid[: shape[0], : shape[1]]
    body = ((x - 20) / 18.0) ** 2 + ((y - 15) / 12.0) ** 2 <= 1
    lung_l = ((x - 12) / 5.0) ** 2 + ((y - 15) / 6.0) ** 2 <= 1
    lung_r = ((x - 28) / 5.0) ** 2 + ((y - 15) / 6.0) ** 2 <= 1
    sl = np.where(body, 40.0, -1000.0)
    sl[lung_l | lung_r] = -850.0
    return np.repeat(sl[:, :, None], shape[2], axis=2)[None], (lung_l | lung_r), body


def _with_spacing(img: np.ndarray, mm: float):
    """``img`` as a MetaTensor whose voxels are ``mm`` wide (the lung tests need sizes and depths in mm)."""
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(img), affine=torch.diag(torch.tensor([mm, mm, mm, 1.0])))


def test_lung_select_finds_enclosed_air_only():
    img, lungs, body = _chest()
    sel = LungSelect(-500.0)(_with_spacing(img, 3.0))  # 3 mm voxels: a 120 x 90 mm trunk, 30 ml of lung
    assert sel.shape == img.shape
    np.testing.assert_array_equal(np.asarray(sel)[0, :, :, 3], lungs)  # outside air excluded
    assert isinstance(sel, torch.Tensor)


def test_lung_select_lungs_open_at_top_and_bottom_slices():
    img, lungs, _ = _chest()
    # the first and last slices are lungs only up to the volume border in z: still enclosed in-plane
    sel = np.asarray(LungSelect(-500.0)(_with_spacing(img, 3.0)))
    assert sel[0, :, :, 0].sum() == lungs.sum() and sel[0, :, :, -1].sum() == lungs.sum()


def test_lung_select_leaves_out_gas_and_tiny_chests():
    img, lungs, body = _chest()
    gas = img.copy()
    gas[0][np.repeat(lungs[:, :, None], img.shape[3], axis=2)] = -990.0  # pure air: stomach or bowel gas
    assert np.array_equal(np.asarray(LungSelect(-500.0)(_with_spacing(gas, 3.0))), img > -500)  # body instead
    # the same phantom at 1 mm is 3 ml of "lung": too small to be a chest, so the body is cropped to
    assert np.array_equal(np.asarray(LungSelect(-500.0, resolution_mm=1.0)(_with_spacing(img, 1.0))), img > -500)


def test_lung_select_falls_back_to_body():
    img = np.full((1, 20, 20, 4), -1000.0)
    img[0, 5:10, 5:10, :] = 40.0  # a block in air: nothing enclosed
    sel = LungSelect(-500.0)(img)
    np.testing.assert_array_equal(sel, img > -500)
    np.testing.assert_array_equal(HUThreshold(-500.0)(img), img > -500)


def test_foreground_stats():
    img = np.arange(1000, dtype=float).reshape(10, 10, 10)
    lab = np.zeros_like(img)
    lab[:5] = 1
    s = foreground_intensity_stats([img], [lab])
    assert s["mean"] == pytest.approx(249.5) and s["p00_5"] < s["mean"] < s["p99_5"]
    with pytest.raises(ValueError, match="no foreground voxels"):
        foreground_intensity_stats([img], [np.zeros_like(img)])


def test_lung_select_bounding_box_equals_the_full_masks_box() -> None:
    """The crop asks only for a box: computed on the coarse grid, it is the box of the full-size selection
    widened by the lung rim (5 mm: 4 voxels of 1.5 mm)."""
    from monai_pipeline.arrays import bounding_box

    rng = np.random.default_rng(3)
    for resolution in (1.5, 3.0, 4.5):  # subsampling by 1, 2 and 3 of 1.5 mm voxels
        img = np.full((1, 61, 47, 20), 40.0, np.float32)
        img[0, :3] = -1000.0  # air outside the body touches the border
        x0, y0 = rng.integers(12, 30), rng.integers(8, 20)
        img[0, x0:x0 + 17, y0:y0 + 13, 3:15] = -850.0  # one enclosed "lung", 9 ml
        sel = LungSelect(-500.0, resolution_mm=resolution)
        box = sel.bounding_box(_with_spacing(img, 1.5))
        assert box == bounding_box(np.asarray(sel(_with_spacing(img, 1.5)))[0], (4, 4, 4))
        assert box[0].start <= x0 and box[0].stop >= x0 + 17 and box[2].start <= 3 and box[2].stop >= 15


def test_resample_to_spacing_matches_monai_spacing_grid_and_values() -> None:
    """The separable resampling gives MONAI ``Spacing``'s grid (shape, affine) and its values (within 0.05 HU of
    MONAI's float32 ``grid_sample``), on RAS, mirrored, oblique and down-sampled grids; labels are MONAI's own."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    from monai_pipeline.transforms.array import ResampleToSpacing

    def rotation(a: float, b: float) -> np.ndarray:
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        return rz @ rx

    g = torch.Generator().manual_seed(0)
    cases = [(np.eye(3), (0.7, 0.7, 1.25), (40, 30, 20), (1.0, 1.0, 1.5)),
             (np.diag([-1.0, 1.0, -1.0]), (1.3, 1.1, 0.9), (25, 19, 31), (1.0, 1.0, 1.5)),
             (rotation(0.3, 0.2), (0.8, 0.6, 2.0), (33, 41, 17), (1.0, 1.0, 1.5)),
             (np.eye(3), (0.5, 0.5, 0.5), (64, 48, 40), (1.7, 1.3, 2.2))]
    for rot, spacing, shape, pixdim in cases:
        affine = np.eye(4)
        affine[:3, :3] = rot @ np.diag(spacing)
        affine[:3, 3] = [10.0, -20.0, 30.0]
        hu = (torch.rand(1, *shape, generator=g) * 2000 - 1000).to(torch.int16)
        img = MetaTensor(hu, affine=torch.as_tensor(affine))
        expected = Spacing(pixdim=pixdim, mode="bilinear", dtype=np.float32)(img)
        got = ResampleToSpacing(pixdim)(img)
        assert tuple(got.shape) == tuple(expected.shape)
        np.testing.assert_allclose(np.asarray(got.affine), np.asarray(expected.affine), atol=1e-9)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=0.05)
        labels = MetaTensor((hu > 500).to(torch.uint8), affine=torch.as_tensor(affine))
        np.testing.assert_array_equal(ResampleToSpacing(pixdim, mode="nearest")(labels).numpy(),
                                      Spacing(pixdim=pixdim, mode="nearest", dtype=np.float32)(labels).numpy())
