"""Rasterising contours with the LIDC convention, against hand-counted pixels."""

from __future__ import annotations

import numpy as np
import pytest

from monai_pipeline.lidc.raster import polygon_interior, slice_mask
from monai_pipeline.lidc.xml import Roi, parse_read
from tests.conftest import SHARED
from tests.lidc.lidc_fixtures import interior_by_ray_casting, square_outline

SAMPLES = SHARED / "lidc" / "samples"


def test_square_outline_interior_excludes_outline():
    m = polygon_interior(np.array(square_outline(10, 10, 16, 16)), (32, 32))
    expect = np.zeros((32, 32), bool)
    expect[11:16, 11:16] = True  # 5 x 5 pixels strictly inside the ring
    np.testing.assert_array_equal(m, expect)


def test_hand_drawn_diamond():
    # outline of a diamond centred at (8, 8) with "radius" 3 (8-connected chain)
    pts = [(8, 5), (9, 6), (10, 7), (11, 8), (10, 9), (9, 10), (8, 11), (7, 10), (6, 9), (5, 8), (6, 7), (7, 6)]
    m = polygon_interior(np.array(pts), (16, 16))
    # inside the ring: the rows of the diamond of radius 2 -> 1 + 3 + 5 + 3 + 1 = 13 pixels
    assert m.sum() == 13 and m[8, 8] and m[8, 6] and not m[8, 5]


def test_square_with_hole():
    outer = Roi(0.0, "a", True, np.array(square_outline(10, 10, 20, 20)))
    hole = Roi(0.0, "a", False, np.array(square_outline(13, 13, 17, 17)))
    m = slice_mask([outer, hole], (32, 32))
    assert m.sum() == 9 * 9 - 3 * 3
    assert not m[15, 15] and m[13, 13] and m[17, 15], "hole interior cut, exclusion outline stays nodule"


def test_two_inclusions_ored_and_point_has_no_interior():
    a = Roi(0.0, "a", True, np.array(square_outline(2, 2, 6, 6)))
    b = Roi(0.0, "a", True, np.array(square_outline(5, 5, 9, 9)))
    m = slice_mask([a, b], (12, 12))
    assert m.sum() == 9 + 9 - 0  # interiors 3..5 and 6..8 do not overlap
    assert polygon_interior(np.array([[4, 4]]), (8, 8)).sum() == 0


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/lidc not present")
@pytest.mark.parametrize("name", ["185_069.xml", "187_044.xml", "188_259.xml", "189_110.xml"])
def test_real_contours_match_independent_ray_casting(name):
    """Every multi-point roi of real reads, rasterised two ways (matplotlib's path test vs. even-odd ray
    casting written in the test), pixel for pixel."""
    read = parse_read(SAMPLES / name)
    n = 0
    for nod in read.nodule_reads:
        for r in nod.rois:
            if len(r.points) < 3:
                continue
            pts = [tuple(p) for p in r.points]
            np.testing.assert_array_equal(polygon_interior(r.points, (512, 512)),
                                          interior_by_ray_casting(pts, (512, 512)), err_msg=f"{name} z={r.z}")
            n += 1
    assert n >= 10
