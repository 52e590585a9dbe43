"""Metrics against hand-computed values on small arrays, including empty masks and anisotropic spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_pipeline.evaluation import (
    case_metrics,
    distance_metrics,
    lesion_metrics,
    overlap_metrics,
    summarize,
)


def _box(shape, sl):
    m = np.zeros(shape, bool)
    m[sl] = True
    return m


def test_overlap_hand_computed():
    ref = _box((10, 10, 10), np.s_[2:6, 2:6, 2:4])  # 32 voxels
    pred = _box((10, 10, 10), np.s_[4:8, 2:6, 2:4])  # 32 voxels, 16 shared
    m = overlap_metrics(pred, ref)
    assert m["dice"] == pytest.approx(2 * 16 / 64)
    assert m["iou"] == pytest.approx(16 / 48)
    assert m["sensitivity"] == pytest.approx(16 / 32)
    assert m["precision"] == pytest.approx(16 / 32)
    assert m["specificity"] == pytest.approx((1000 - 48) / (1000 - 32))


def test_empty_conventions():
    e = np.zeros((5, 5, 5), bool)
    one = _box((5, 5, 5), np.s_[1:2, 1:2, 1:2])
    both = case_metrics(e, e, (1, 1, 1))
    assert both["dice"] == 1.0 and both["iou"] == 1.0
    assert math.isnan(both["sensitivity"]) and math.isnan(both["precision"]) and math.isnan(both["hd95_mm"])
    miss = case_metrics(e, one, (1, 1, 1))
    assert miss["dice"] == 0.0 and miss["sensitivity"] == 0.0 and math.isnan(miss["assd_mm"])
    assert miss["lesion_fn"] == 1 and miss["lesion_tp"] == 0
    fp = case_metrics(one, e, (1, 1, 1))
    assert fp["dice"] == 0.0 and math.isnan(fp["sensitivity"]) and fp["lesion_fp"] == 1


def test_surface_distance_anisotropic():
    # two single-voxel objects 3 voxels apart along z with 2.5 mm slices: every surface distance is 7.5 mm
    a = _box((5, 5, 9), np.s_[2:3, 2:3, 2:3])
    b = _box((5, 5, 9), np.s_[2:3, 2:3, 5:6])
    d = distance_metrics(a, b, (0.7, 0.7, 2.5))
    assert d["hd95_mm"] == pytest.approx(7.5) and d["assd_mm"] == pytest.approx(7.5)
    # shifted by one column in x (0.7 mm): surfaces of two 3x3x3 cubes
    c1 = _box((9, 9, 9), np.s_[2:5, 2:5, 2:5])
    c2 = _box((9, 9, 9), np.s_[3:6, 2:5, 2:5])
    d2 = distance_metrics(c1, c2, (0.7, 1.0, 2.0))
    # c1's surface is its 26 voxels minus the centre (3,3,3). Its 9 voxels at x=2 are 0.7 mm from c2's face
    # at x=3; its voxel (4,3,3) is inside c2 (c2's centre), 0.7 mm from c2's surface; the other 16 lie on
    # c2's surface. So 10 distances of 0.7 mm out of 26, and the same from c2's side by symmetry.
    assert d2["assd_mm"] == pytest.approx(2 * 10 * 0.7 / 52)
    assert d2["hd95_mm"] == pytest.approx(0.7)


def test_identical_masks_zero_distance():
    a = _box((8, 8, 8), np.s_[2:6, 1:5, 3:7])
    m = case_metrics(a, a, (0.8, 0.8, 1.5))
    assert m["dice"] == 1.0 and m["hd95_mm"] == 0.0 and m["assd_mm"] == 0.0
    assert m["ref_volume_mm3"] == pytest.approx(64 * 0.8 * 0.8 * 1.5)


def test_lesion_detection_rule():
    ref = np.zeros((20, 20, 20), bool)
    ref[1:4, 1:4, 1:4] = True  # lesion A (27 voxels)
    ref[10:13, 10:13, 10:13] = True  # lesion B
    pred = np.zeros_like(ref)
    pred[3:5, 3:5, 3:5] = True  # touches A by one voxel (1/27)
    pred[16:18, 16:18, 16:18] = True  # false positive
    m = lesion_metrics(pred, ref)
    assert (m["lesion_tp"], m["lesion_fp"], m["lesion_fn"]) == (1, 1, 1)
    assert m["lesion_sensitivity"] == pytest.approx(0.5)
    strict = lesion_metrics(pred, ref, min_overlap=0.1)
    assert strict["lesion_tp"] == 0 and strict["lesion_fn"] == 2


def test_summarize_ci_and_nan():
    s = summarize([0.5, 0.7, float("nan"), 0.9])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.7) and s["median"] == pytest.approx(0.7)
    assert s["std"] == pytest.approx(0.2)
    # t(0.975, 2) = 4.302653
    assert s["ci95_high"] - s["mean"] == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-5)


def _random_blobs(rng, shape, n):
    m = np.zeros(shape, bool)
    for _ in range(n):
        c = [rng.integers(3, s - 3) for s in shape]
        r = rng.integers(1, 4)
        sl = tuple(slice(max(0, ci - r), ci + r + 1) for ci in c)
        m[sl] = True
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_distances_equal_monai(seed):
    """Our KD-tree surface distances against MONAI's compute_hausdorff_distance / compute_average_surface_distance
    on random masks with anisotropic spacing (x, y, z in mm)."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    from monai_pipeline.evaluation import distance_metrics

    rng = np.random.default_rng(seed)
    shape, spacing = (30, 26, 18), (0.7, 0.9, 2.5)
    pred, ref = _random_blobs(rng, shape, 4), _random_blobs(rng, shape, 3)
    ours = distance_metrics(pred, ref, spacing)
    p = torch.as_tensor(pred)[None, None].float()
    r = torch.as_tensor(ref)[None, None].float()
    hd95 = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing))
    assd = float(compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=spacing))
    assert ours["hd95_mm"] == pytest.approx(hd95, rel=1e-6)
    assert ours["assd_mm"] == pytest.approx(assd, rel=1e-6)
