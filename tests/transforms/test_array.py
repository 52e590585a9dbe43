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


def test_lung_select_finds_enclosed_air_only():
    img, lungs, body = _chest()
    sel = LungSelect(-500.0, min_voxels=10)(img)
    assert sel.shape == img.shape
    np.testing.assert_array_equal(sel[0, :, :, 3], lungs)  # outside air excluded
    assert isinstance(LungSelect(min_voxels=10)(torch.as_tensor(img)), torch.Tensor)


def test_lung_select_lungs_open_at_top_and_bottom_slices():
    img, lungs, _ = _chest()
    # the first and last slices are lungs only up to the volume border in z: still enclosed in-plane
    sel = LungSelect(-500.0, min_voxels=10)(img)
    assert sel[0, :, :, 0].sum() == lungs.sum() and sel[0, :, :, -1].sum() == lungs.sum()


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
    """The crop asks only for a box: computed on the coarse grid, it is the box of the full-size selection."""
    from monai_pipeline.lungs import bounding_box

    rng = np.random.default_rng(3)
    for stride in (1, 2, 3):
        img = np.full((1, 61, 47, 20), 40.0, np.float32)
        img[0, :3] = -1000.0  # air outside the body touches the border
        x0, y0 = rng.integers(8, 30), rng.integers(8, 20)
        img[0, x0:x0 + 17, y0:y0 + 13, 3:15] = -850.0  # one enclosed "lung"
        sel = LungSelect(-500.0, min_voxels=10, stride=stride)
        assert sel.bounding_box(img) == bounding_box(np.asarray(sel(img))[0])
