"""The export step's inversion: candidate-box linear resampling equals resampling the whole volume."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from monai_pipeline.inference.export import invert_foreground, resample_to_grid
from monai_pipeline.io.geometry import Geometry, sitk_to_xyz_array


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _margin_map(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A smooth p(fg) - p(bg) field in [-1, 1] with a handful of positive blobs (some close to each other and to
    the border) on a negative background."""
    rng = np.random.default_rng(seed)
    field = np.full(shape, -0.9, np.float32)
    for _ in range(7):
        c = [rng.integers(0, s) for s in shape]
        r = rng.uniform(1.0, 5.0)
        zz = np.indices(shape).astype(np.float32)
        d = np.sqrt(sum((zz[a] - c[a]) ** 2 for a in range(3)))
        field = np.maximum(field, (1.8 * np.exp(-(d / r) ** 2) - 0.9).astype(np.float32))
    field += rng.normal(0, 0.05, shape).astype(np.float32)
    return ndimage.gaussian_filter(field, 0.7).astype(np.float32)


CASES = [
    # (input direction, input spacing mm, input size): flipped rows + feet first, oblique, finer and coarser grids
    (np.diag([1.0, -1.0, -1.0]), (0.7, 0.7, 1.25), (70, 64, 36)),
    (_rotation(17.0), (0.9, 0.8, 2.0), (60, 58, 24)),
    (np.eye(3)[:, [1, 0, 2]], (1.6, 1.4, 3.0), (30, 32, 16)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_invert_foreground_equals_whole_volume_linear_resampling(case: int) -> None:
    direction, spacing, size = CASES[case]
    net_shape = (48, 44, 30)
    margin = _margin_map(net_shape, seed=case)
    affine_ras = np.diag([1.0, 1.0, 1.5, 1.0])
    affine_ras[:3, 3] = (-20.0, -18.0, -20.0)
    # an input grid centred on the network grid, so some candidates fall off its edges
    centre_lps = np.array([20.0 - 24.0, 18.0 - 22.0, -20.0 + 22.5])
    d = np.asarray(direction, dtype=np.float64)
    origin = centre_lps - d @ (np.asarray(size) / 2.0 * np.asarray(spacing))
    geometry = Geometry(size, spacing, tuple(origin), tuple(d.reshape(-1)))

    whole = sitk_to_xyz_array(resample_to_grid(margin, affine_ras, geometry, sitk.sitkLinear, sitk.sitkFloat32)) > 0
    boxes = invert_foreground(margin, affine_ras, geometry)
    assert boxes.shape == tuple(size) and boxes.dtype == np.uint8
    assert whole.sum() > 50, "the test field must put foreground on the input grid"
    np.testing.assert_array_equal(boxes.astype(bool), whole)


def test_invert_foreground_empty_and_outside() -> None:
    geometry = Geometry((20, 20, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).reshape(-1)))
    assert not invert_foreground(np.full((8, 8, 8), -1.0, np.float32), np.eye(4), geometry).any()
    far = np.eye(4)
    far[:3, 3] = (500.0, 500.0, 500.0)  # network grid nowhere near the input grid
    assert not invert_foreground(np.ones((8, 8, 8), np.float32), far, geometry).any()


def test_invert_foreground_speckled_prediction_is_one_box_and_still_exact() -> None:
    """An untrained model's speckle (thousands of one-voxel candidates) takes the one-box path: same result as
    resampling the whole volume."""
    from monai_pipeline.inference.export import MAX_CANDIDATE_BOXES

    rng = np.random.default_rng(3)
    net_shape = (40, 40, 24)
    margin = np.where(rng.random(net_shape) < 0.03, 0.9, -0.5).astype(np.float32)
    assert ndimage.label(margin > 0, np.ones((3, 3, 3)))[1] > MAX_CANDIDATE_BOXES
    affine_ras = np.diag([1.0, 1.0, 1.5, 1.0])
    affine_ras[:3, 3] = (-20.0, -20.0, -18.0)
    direction, spacing, size = CASES[0]
    d = np.asarray(direction, dtype=np.float64)
    origin = np.array([0.0, 0.0, 0.0]) - d @ (np.asarray(size) / 2.0 * np.asarray(spacing))
    geometry = Geometry(size, spacing, tuple(origin), tuple(d.reshape(-1)))
    whole = sitk_to_xyz_array(resample_to_grid(margin, affine_ras, geometry, sitk.sitkLinear, sitk.sitkFloat32)) > 0
    assert whole.sum() > 50
    np.testing.assert_array_equal(invert_foreground(margin, affine_ras, geometry).astype(bool), whole)


def test_lesion_score_max_and_mean_over_network_voxels_each_counted_once() -> None:
    """On an input grid twice as fine as the network grid (8 input voxels per network voxel), a lesion's score is
    the max or the mean of the network probabilities it covers, each network voxel once whatever the number of
    input voxels mapped to it."""
    from monai_pipeline.inference.export import probability_score
    from monai_pipeline.io.geometry import LPS_TO_RAS

    eye = tuple(np.eye(3).reshape(-1))
    net = Geometry((10, 10, 10), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), eye)
    fine = Geometry((20, 20, 20), (1.0, 1.0, 1.0), (-0.5, -0.5, -0.5), eye)  # input voxels 2i, 2i+1 -> network i
    fg = np.zeros((10, 10, 10), np.float32)
    fg[3:5, 3, 3] = (1.0, 0.6)
    fg[5, 3, 3] = 0.2
    affine_ras = LPS_TO_RAS @ net.lps_affine()
    # 16 input voxels over network voxels (3,3,3) and (4,3,3), plus one over (5,3,3)
    idx = np.array([(x, y, z) for x in range(6, 10) for y in (6, 7) for z in (6, 7)] + [(10, 6, 6)])
    bg = 1.0 - fg  # the scorer reads the background probability
    assert probability_score(bg, affine_ras, fine, "max")(idx) == pytest.approx(1.0)
    assert probability_score(bg, affine_ras, fine, "mean")(idx) == pytest.approx((1.0 + 0.6 + 0.2) / 3)
    assert probability_score(bg, affine_ras, fine)(idx[:8]) == pytest.approx(1.0), "max is the default"


@pytest.mark.parametrize("kind", ["max", "mean"])
def test_lesion_scores_rank_where_the_foreground_probability_saturates(kind) -> None:
    """Logit margins of 20 and 25 both give a float32 softmax foreground probability of exactly 1.0; the scores
    (from the background probability, in float64) still rank them, and agree with 1 - exp(-margin)."""
    from monai_pipeline.inference.export import probability_score
    from monai_pipeline.io.geometry import LPS_TO_RAS

    eye = tuple(np.eye(3).reshape(-1))
    grid = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), eye)
    logits = torch.zeros(2, 8, 8, 8)
    logits[1, 2, 2, 2], logits[1, 5, 5, 5] = 20.0, 25.0
    probs = torch.softmax(logits, dim=0)
    assert probs[1, 2, 2, 2].item() == probs[1, 5, 5, 5].item() == 1.0, "saturated in float32"
    score = probability_score(probs[0].numpy(), LPS_TO_RAS @ grid.lps_affine(), grid, kind)
    weak, strong = score(np.array([[2, 2, 2]])), score(np.array([[5, 5, 5]]))
    assert weak < strong < 1.0
    assert 1.0 - weak == pytest.approx(np.exp(-20.0), rel=1e-5) and 1.0 - strong == pytest.approx(np.exp(-25.0),
                                                                                                 rel=1e-5)


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.7])
def test_decision_threshold_is_a_foreground_probability(threshold: float) -> None:
    """``inference.foreground_threshold``: on the network grid (``decide``) and after linear resampling
    (``invert_foreground`` of the offset margin) a voxel is foreground where p(foreground) > threshold, checked
    against the softmax probabilities themselves and against SimpleITK resampling of p(foreground) alone."""
    from monai_pipeline.inference.export import decide, margin_offset

    logits = torch.from_numpy(np.stack([np.zeros((48, 44, 30), np.float32), 6 * _margin_map((48, 44, 30), 5)]))
    probs = torch.softmax(logits, dim=0)
    assert 0.002 < float((probs[1] > threshold).float().mean()) < 0.5
    np.testing.assert_array_equal(decide(probs, threshold).astype(bool), (probs[1] > threshold).numpy())
    if threshold == 0.5:
        np.testing.assert_array_equal(decide(probs, threshold).astype(bool), (probs[1] > probs[0]).numpy())

    direction, spacing, size = CASES[1]
    affine_ras = np.diag([1.0, 1.0, 1.5, 1.0])
    affine_ras[:3, 3] = (-20.0, -18.0, -20.0)
    d = np.asarray(direction, dtype=np.float64)
    origin = np.array([-4.0, -4.0, 2.5]) - d @ (np.asarray(size) / 2.0 * np.asarray(spacing))
    geometry = Geometry(size, spacing, tuple(origin), tuple(d.reshape(-1)))
    fg, bg = probs[1].numpy(), probs[0].numpy()
    mask = invert_foreground(fg - bg - margin_offset(threshold), affine_ras, geometry).astype(bool)
    fg_in = sitk_to_xyz_array(resample_to_grid(fg, affine_ras, geometry, sitk.sitkLinear, sitk.sitkFloat32))
    inside = sitk_to_xyz_array(resample_to_grid(np.ones_like(fg), affine_ras, geometry, sitk.sitkLinear,
                                                sitk.sitkFloat32)) > 0.999
    expected = (fg_in > threshold) & inside
    clear = np.abs(fg_in - threshold) > 1e-5  # float32 rounding decides exact ties either way
    assert expected.sum() > 50
    np.testing.assert_array_equal(mask[clear], expected[clear])
