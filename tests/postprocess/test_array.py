"""Post-processing: hand-built grids, anisotropic spacing, never modifying the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_pipeline.io import Geometry
from monai_pipeline.postprocess import (
    PostprocessMask,
    PostprocessMaskd,
    binary_close,
    binary_open,
    fill_holes,
    keep_largest_component,
    lesion_table,
    remove_small_components,
    split_at_necks,
)


def test_remove_small_components_by_mm3():
    m = np.zeros((10, 10, 10), np.uint8)
    m[0:2, 0:2, 0:2] = 1  # 8 voxels
    m[5:8, 5:8, 5:8] = 1  # 27 voxels
    before = m.copy()
    # spacing 0.5 x 0.5 x 2 mm -> voxel 0.5 mm3: 4 mm3 and 13.5 mm3
    out = remove_small_components(m, (0.5, 0.5, 2.0), min_volume_mm3=5.0)
    assert out.sum() == 27 and not out[0, 0, 0]
    np.testing.assert_array_equal(m, before)


def test_keep_largest_and_fill_holes_match_scipy():
    rng = np.random.default_rng(0)
    m = rng.random((20, 20, 20)) > 0.7
    m = ndimage.binary_dilation(m, iterations=1)
    np.testing.assert_array_equal(fill_holes(m), ndimage.binary_fill_holes(m))
    lab, n = ndimage.label(m, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    np.testing.assert_array_equal(keep_largest_component(m), lab == sizes.argmax())


def test_fill_holes_hollow_cube():
    m = np.zeros((9, 9, 9), bool)
    m[2:7, 2:7, 2:7] = True
    m[4, 4, 4] = False
    assert fill_holes(m)[4, 4, 4]


def test_opening_respects_anisotropic_spacing():
    # a 3-voxel-thick slab in z at 2 mm slices is 6 mm thick: survives a 2 mm opening; a 1-voxel line does not
    m = np.zeros((15, 15, 12), bool)
    m[3:12, 3:12, 4:7] = True
    m[7, 0:15, 10] = True
    out = binary_open(m, (0.7, 0.7, 2.0), radius_mm=1.5)
    assert out[7, 7, 5] and not out[7, 1, 10]
    closed = binary_close(np.pad(np.ones((3, 3, 3), bool), 3), (1, 1, 1), 1.0)
    assert closed.sum() >= 27


def test_transform_classes_channel_first():
    m = np.zeros((1, 8, 8, 8), np.uint8)
    m[0, 1:3, 1:3, 1:3] = 1
    m[0, 5, 5, 5] = 1
    out = PostprocessMask({"remove_small": {"min_volume_mm3": 2.0}}, spacing=(1, 1, 1))(torch.as_tensor(m))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 8, 8, 8) and int(out.sum()) == 8
    d = PostprocessMaskd(keys="pred", steps={"keep_largest": {}}, spacing=(1, 1, 1))({"pred": m})
    assert int(np.asarray(d["pred"]).sum()) == 8
    with pytest.raises(ValueError, match="connectivity must be 6, 18 or 26"):
        PostprocessMask({}, connectivity=4)


def test_lesion_table_units():
    geom = Geometry((20, 20, 10), (0.5, 0.5, 2.0), (100.0, -50.0, 10.0), tuple(np.eye(3).reshape(-1)))
    m = np.zeros(geom.size, np.uint8)
    m[2:6, 4:8, 3:5] = 1  # 4 x 4 x 2 voxels = 32 voxels * 0.5 mm3
    hu = np.full(geom.size, -800.0)
    hu[m > 0] = 35.0
    (row,) = lesion_table(m, geom, hu)
    assert row["volume_mm3"] == pytest.approx(16.0)
    assert row["equivalent_diameter_mm"] == pytest.approx((6 * 16 / np.pi) ** (1 / 3), abs=1e-3)  # rounded to um
    # longest in-plane extent: corner-to-corner centres 3*sqrt(0.5^2+0.5^2) plus one voxel width
    assert row["longest_axial_diameter_mm"] == pytest.approx(3 * np.sqrt(0.5) + 0.5, abs=1e-3)
    assert (row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]) == pytest.approx((101.75, -47.25, 17.0))
    assert row["mean_hu"] == pytest.approx(35.0)


def _chest_hu(shape=(60, 40, 24)):
    x, y = np.ogrid[: shape[0], : shape[1]]
    body = ((x - 30) / 28.0) ** 2 + ((y - 20) / 18.0) ** 2 <= 1
    lung = ((x - 16) / 8.0) ** 2 + ((y - 20) / 10.0) ** 2 <= 1
    sl = np.where(body, 40.0, -1000.0)
    sl[lung] = -850.0
    return np.repeat(sl[:, :, None], shape[2], axis=2), lung


def test_lung_region_includes_nodules_inside_and_at_the_pleura():
    from monai_pipeline.lungs import lung_region
    from monai_pipeline.postprocess import keep_components_in_region

    hu, lung = _chest_hu()
    nodules = np.zeros(hu.shape, np.uint8)
    nodules[15:18, 19:22, 4:6] = 1  # a nodule inside the lung
    nodules[8:12, 18:22, 4:6] = 1  # a juxtapleural nodule touching the pleura (lung edge at x = 8)
    hu[nodules > 0] = 30.0
    wall = np.zeros(hu.shape, np.uint8)
    wall[44:48, 18:22, 4:6] = 1  # a soft-tissue blob in the chest wall, far from the lung
    for resolution in (0.0, 4.0):  # exact, and a 4 mm working grid
        # 2 mm voxels: a 112 x 72 mm trunk whose lungs lie 12-16 mm deep (a lung must be inside the trunk)
        region = lung_region(hu, (2.0, 2.0, 4.0), closing_mm=8.0, resolution_mm=resolution)
        kept = keep_components_in_region(nodules | wall, region)
        np.testing.assert_array_equal(kept, nodules > 0)


def test_keep_components_in_region():
    from monai_pipeline.postprocess import keep_components_in_region

    m = np.zeros((20, 20, 4), np.uint8)
    m[2:5, 2:5, :] = 1  # inside
    m[12:16, 12:16, :] = 1  # outside
    region = np.zeros_like(m, bool)
    region[:10, :10, :] = True
    out = keep_components_in_region(m, region)
    assert out[3, 3, 1] and not out[13, 13, 1]


def test_a_scan_without_lungs_gets_no_candidates_unless_asked(caplog):
    """An abdomen-like scan (body, no lung air): the lung filter empties the mask with one warning by default;
    ``keep_without_lungs`` keeps every candidate. With lungs, a candidate inside them is kept either way."""
    from monai_pipeline.config import load_config
    from monai_pipeline.postprocess.steps import postprocess_array

    hu, lung = _chest_hu()
    abdomen = np.where(hu > -900, 40.0, -1000.0)  # the same trunk, soft tissue where the lungs were
    mask = np.zeros(hu.shape, np.uint8)
    mask[14:19, 18:23, 8:13] = 1  # inside the (former) left lung
    post = load_config().postprocess
    keep = load_config({"postprocess": {"steps": {"lung_filter": {"keep_without_lungs": True}}}}).postprocess
    spacing = (2.0, 2.0, 4.0)
    grid = Geometry(hu.shape, spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with caplog.at_level("WARNING"):
        assert postprocess_array(mask, spacing, post, hu=abdomen, geometry=grid).sum() == 0
    assert "no lungs found" in caplog.text and "--keep-without-lungs" in caplog.text
    assert postprocess_array(mask, spacing, keep, hu=abdomen, geometry=grid).sum() == mask.sum()
    for cfg in (post, keep):
        assert postprocess_array(mask, spacing, cfg, hu=hu, geometry=grid).sum() == mask.sum()


def test_shape_filter_drops_tubes_and_keeps_balls():
    """The shape_filter step (off by default) removes a vessel-like tube and keeps a ball beside it; each component
    is judged on its own elongation, in mm (the anisotropic spacing counts)."""
    from monai_pipeline.config import load_config
    from monai_pipeline.postprocess import elongation
    from monai_pipeline.postprocess.steps import postprocess_array

    spacing = (0.7, 0.7, 2.0)
    mask = np.zeros((60, 40, 20), np.uint8)
    x, y, z = np.indices(mask.shape)
    ball = ((x - 15) * 0.7) ** 2 + ((y - 20) * 0.7) ** 2 + ((z - 10) * 2.0) ** 2 <= 5.0 ** 2
    tube = (np.abs(y - 20) <= 2) & (np.abs(z - 10) <= 0) & (x >= 30) & (x < 58)  # 20 mm x 3.5 mm x 2 mm
    mask[ball | tube] = 1
    assert elongation(np.argwhere(tube), spacing) > 3.0 and elongation(np.argwhere(ball), spacing) < 1.2
    steps = {"lung_filter": {"enabled": False}, "remove_small": {"enabled": False}}
    default = load_config({"postprocess": {"steps": steps}}).postprocess
    assert postprocess_array(mask, spacing, default).sum() == mask.sum(), "off by default"
    on = load_config({"postprocess": {"steps": {**steps, "shape_filter": {"enabled": True, "max_elongation": 2.0}}}})
    out = postprocess_array(mask, spacing, on.postprocess)
    np.testing.assert_array_equal(out.astype(bool), ball)


def _nodule_on_vessel(spacing):
    """A ball of radius 5 mm (a nodule) and one of 2.5 mm (a vessel's branching) joined by a 20 mm tube of radius
    1.5 mm: one component, whose two wide parts are 3.5 and 1 mm wider than the passage between them."""
    shape = (80, 40, 30)
    x, y, z = (np.indices(shape).T * np.asarray(spacing)).T
    nodule = (x - 10) ** 2 + (y - 14) ** 2 + (z - 18) ** 2 <= 5.0 ** 2
    branch = (x - 40) ** 2 + (y - 14) ** 2 + (z - 18) ** 2 <= 2.5 ** 2
    tube = ((y - 14) ** 2 + (z - 18) ** 2 <= 1.5 ** 2) & (x > 10) & (x < 40)
    return nodule, branch | tube, (x, y, z)


def test_split_necks_cuts_a_nodule_off_the_vessel_it_sits_on():
    """A nodule on a vessel (one component) becomes two: the nodule, whole, and the vessel; only voxels where the
    two touch are removed, the input is not modified, and the anisotropic spacing is respected."""
    from monai_pipeline.arrays import label_components

    spacing = (0.7, 0.7, 1.25)
    nodule, vessel, _ = _nodule_on_vessel(spacing)
    mask = nodule | vessel
    assert label_components(mask)[1] == 1
    before = mask.copy()
    out = split_at_necks(mask, spacing, min_depth_mm=1.0)
    np.testing.assert_array_equal(mask, before)
    assert not (out & ~mask).any()
    lab, n = label_components(out)
    assert n == 2
    part = lab == lab[14, 20, 14]  # the nodule's centre (9.8 mm, 14 mm, 17.5 mm)
    assert (part & nodule).sum() >= 0.95 * nodule.sum() and (part & vessel & ~nodule).sum() <= 0.5 * vessel.sum()
    assert lab[57, 20, 14] not in (0, lab[14, 20, 14])  # the branching (40 mm) lies in the other part
    assert (mask & ~out).sum() <= 0.1 * vessel.sum()  # the cut is a thin layer of the tube


def test_split_necks_leaves_balls_tubes_and_lobes_whole():
    """A ball alone, a tube alone, or two overlapping balls whose neck is nearly as wide as they are (a
    lobulated nodule) stay as they are; a depth of 0 is off."""
    spacing = (0.7, 0.7, 1.25)
    nodule, vessel, (x, y, z) = _nodule_on_vessel(spacing)
    tube = ((y - 14) ** 2 + (z - 18) ** 2 <= 1.5 ** 2) & (x > 10) & (x < 40)
    lobes = nodule | ((x - 15) ** 2 + (y - 14) ** 2 + (z - 18) ** 2 <= 4.5 ** 2)
    for m in (nodule, tube, lobes):
        np.testing.assert_array_equal(split_at_necks(m, spacing, min_depth_mm=1.0), m)
    np.testing.assert_array_equal(split_at_necks(nodule | vessel, spacing, min_depth_mm=0.0), nodule | vessel)


def test_split_necks_step_is_off_by_default_and_splits_when_on():
    """The ``split_necks`` step of ``postprocess.steps``: off in default.yaml; on, it splits."""
    from monai_pipeline.arrays import label_components
    from monai_pipeline.config import load_config
    from monai_pipeline.postprocess.steps import postprocess_array

    spacing = (0.7, 0.7, 1.25)
    nodule, vessel, _ = _nodule_on_vessel(spacing)
    steps = {"lung_filter": {"enabled": False}}
    default = load_config({"postprocess": {"steps": steps}}).postprocess
    assert not default.steps["split_necks"]["enabled"]
    assert label_components(postprocess_array(nodule | vessel, spacing, default) > 0)[1] == 1
    on = load_config({"postprocess": {"steps": {**steps, "split_necks": {"enabled": True}}}}).postprocess
    assert label_components(postprocess_array(nodule | vessel, spacing, on) > 0)[1] == 2
