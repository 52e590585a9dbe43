"""The lesion table against SimpleITK's LabelShapeStatisticsImageFilter (independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from monai_pipeline.io import Geometry, xyz_array_to_sitk
from monai_pipeline.postprocess import lesion_table


@pytest.mark.parametrize("seed", [0, 1])
def test_lesion_table_equals_simpleitk_shape_statistics(seed):
    rng = np.random.default_rng(seed)
    shape = (40, 36, 20)
    mask = np.zeros(shape, np.uint8)
    for _ in range(6):
        c = [int(rng.integers(4, s - 4)) for s in shape]
        r = [int(v) for v in rng.integers(1, 4, 3)]
        mask[c[0] - r[0]:c[0] + r[0] + 1, c[1] - r[1]:c[1] + r[1] + 1, c[2] - r[2]:c[2] + r[2] + 1] = 1
    d = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # a non-identity, non-RAS direction
    geom = Geometry(shape, (0.7, 0.9, 2.5), (12.0, -40.0, 300.0), tuple(d.reshape(-1)))
    rows = lesion_table(mask, geom, connectivity=26)

    img = xyz_array_to_sitk(mask, geom)
    cc = sitk.ConnectedComponent(img, True)  # fully connected = 26-connectivity
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(cc)
    theirs = sorted((stats.GetCentroid(lab), stats.GetPhysicalSize(lab), stats.GetNumberOfPixels(lab),
                     stats.GetEquivalentSphericalRadius(lab)) for lab in stats.GetLabels())
    ours = sorted(((r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"]), r["volume_mm3"], r["n_voxels"],
                   r["equivalent_diameter_mm"] / 2) for r in rows)
    assert len(ours) == len(theirs) >= 2
    for (c1, v1, n1, r1), (c2, v2, n2, r2) in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(c1, c2, atol=1e-3)  # LPS mm, rounded to 1 um in the table
        assert n1 == n2 and v1 == pytest.approx(v2, abs=1e-3) and r1 == pytest.approx(r2, abs=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_principal_moments_equal_simpleitk_and_elongation_tells_tubes_from_balls(seed):
    """Without the voxel extent, the moments are SimpleITK's ``GetPrincipalMoments`` (on an anisotropic grid with
    a non-identity direction); the table's elongation is about 1 for a ball and large for a one-voxel-thick tube,
    which SimpleITK's own elongation (no voxel extent) reports as 0."""
    from scipy import ndimage

    from monai_pipeline.postprocess import elongation, principal_moments

    rng = np.random.default_rng(seed)
    shape = (30, 28, 16)
    blob = ndimage.gaussian_filter(rng.random(shape), 2.0)
    mask = (blob > np.quantile(blob, 0.97)).astype(np.uint8)
    mask = (ndimage.label(mask, np.ones((3, 3, 3)))[0] == 1).astype(np.uint8)  # one blob of irregular shape
    assert mask.sum() > 10
    d = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    geom = Geometry(shape, (0.7, 0.9, 2.5), (12.0, -40.0, 300.0), tuple(d.reshape(-1)))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(xyz_array_to_sitk(mask, geom))
    idx = np.argwhere(mask)
    np.testing.assert_allclose(principal_moments(idx, geom.spacing, voxel_extent=False),
                               stats.GetPrincipalMoments(1), rtol=1e-6, atol=1e-9)

    spacing = (0.7, 0.7, 1.25)
    xx, yy, zz = np.indices((15, 15, 15), dtype=float)  # (x, y, z) axis order, as the table's masks
    ball_mask = ((xx - 7) * 0.7) ** 2 + ((yy - 7) * 0.7) ** 2 + ((zz - 7) * 1.25) ** 2 <= 4.0 ** 2
    ball = np.argwhere(ball_mask)
    tube = np.array([(i, 5, 5) for i in range(12)])  # 8.4 mm long, one voxel thick
    assert elongation(ball, spacing) == pytest.approx(1.0, abs=0.15)
    assert elongation(tube, spacing) > 5.0
    rows = lesion_table(ball_mask.astype(np.uint8), Geometry((15, 15, 15), spacing, (0.0, 0.0, 0.0),
                                                             tuple(np.eye(3).reshape(-1))))
    assert len(rows) == 1 and rows[0]["elongation"] == round(elongation(ball, spacing), 3)
