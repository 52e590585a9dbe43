"""lungs.py: the distance map kept for speed, against scipy's exact Euclidean distance transform."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from monai_pipeline.lungs import distance_mm


def test_distance_mm_matches_scipy_edt_on_anisotropic_grids() -> None:
    rng = np.random.default_rng(7)
    for shape, spacing in [((40, 50, 30), (2.8, 2.8, 2.5)), ((33, 20, 41), (0.7, 1.1, 3.0))]:
        mask = ndimage.binary_dilation(rng.random(shape) > 0.995, iterations=2)
        expected = ndimage.distance_transform_edt(~mask, sampling=spacing)
        got = distance_mm(mask, spacing)
        assert got.shape == shape
        np.testing.assert_allclose(got, expected, atol=1e-3)
        for r in (2.5, 5.0, 10.0):  # the thresholds the lung region uses; ties within float32 rounding aside
            differ = (got <= r) != (expected <= r)
            assert not np.any(differ & (np.abs(expected - r) > 1e-3))


def test_distance_mm_of_an_empty_mask_is_infinite() -> None:
    assert np.isinf(distance_mm(np.zeros((4, 5, 6), bool), (1.0, 1.0, 1.0))).all()


def test_fill_in_slices_equals_scipy_fill_holes_with_the_in_slice_structure() -> None:
    from monai_pipeline.lungs import fill_in_slices, in_slice_structure

    rng = np.random.default_rng(3)
    for shape in [(30, 40, 12), (17, 9, 25)]:
        # rings with holes, plus noise, so that holes, border-touching background and empty slices all occur
        mask = ndimage.binary_dilation(rng.random(shape) > 0.9, iterations=1) & ~(rng.random(shape) > 0.97)
        for axis in range(3):
            expected = ndimage.binary_fill_holes(mask, structure=in_slice_structure(axis))
            got = fill_in_slices(mask, axis)
            assert np.array_equal(got, expected), (shape, axis)
            assert (got & ~mask).any() or not (expected & ~mask).any()
    assert np.array_equal(fill_in_slices(np.ones((3, 4, 5), bool)), np.ones((3, 4, 5), bool))
