"""Metrics against hand-computed values on small arrays, including empty masks and anisotropic spacing."""

from __future__ import annotations

import json
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


def test_summarize_bootstrap_interval_and_nan():
    s = summarize([0.5, 0.7, float("nan"), 0.9])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.7) and s["median"] == pytest.approx(0.7)
    assert s["std"] == pytest.approx(0.2)
    assert 0.5 <= s["ci95_low"] < s["mean"] < s["ci95_high"] <= 0.9  # a bootstrap mean never leaves the data
    empty = summarize([float("nan"), None])
    assert empty == {"mean": None, "median": None, "std": None, "ci95_low": None, "ci95_high": None, "n": 0}
    assert summarize([0.4])["ci95_low"] is None  # one case: no interval


@pytest.mark.parametrize("values", [[0.0, 1.0], [0.05, 0.98], [1.0, 1.0]])
def test_bootstrap_interval_of_two_cases_stays_inside_0_1(values):
    s = summarize(values)
    assert s["n"] == 2 and 0.0 <= s["ci95_low"] <= s["mean"] <= s["ci95_high"] <= 1.0


def test_froc_and_cpm_on_hand_built_candidates():
    """Scan A: nodules N1 (r 5 mm) and N2 (r 3 mm), an irrelevant finding; scan B: nodule N3 (r 4 mm).
    Hits: N1 0.9 (and a duplicate 0.4, counted once), N2 0.3, N3 0.2; false positives 0.8 (A), 0.7 (B); the
    0.95 candidate on the irrelevant finding counts neither way. FROC: (0, 1/3) (0.5, 1/3) (1, 1/3) (1, 2/3)
    (1, 1); sensitivity at 1/8, 1/4, 1/2 FP/scan = 1/3, at 1, 2, 4, 8 = 1; CPM = (3/3 + 4) / 7 = 5/7."""
    from monai_pipeline.evaluation import Finding, cpm, froc_curve, match_scan, sensitivity_at

    a = match_scan("A", [((1, 0, 0), 0.9), ((0, 2, 0), 0.4), ((100, 0, 0), 0.8), ((51, 0, 0), 0.3),
                         ((0, 101, 0), 0.95)],
                   [Finding((0, 0, 0), 5.0), Finding((50, 0, 0), 3.0)], [Finding((0, 100, 0), 4.0)])
    b = match_scan("B", [((10, 0, 0), 0.7), ((0, 0, 1), 0.2)], [Finding((0, 0, 0), 4.0)])
    assert a.nodule_scores == [0.9, 0.3] and a.fp_scores == [0.8] and a.ignored == 1
    assert b.nodule_scores == [0.2] and b.fp_scores == [0.7]
    curve = froc_curve([a, b])
    assert curve["n_nodules"] == 3 and curve["n_scans"] == 2
    np.testing.assert_allclose(curve["fps_per_scan"], [0, 0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(curve["sensitivity"], [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(sensitivity_at(curve), [1 / 3] * 3 + [1.0] * 4)
    assert cpm([a, b]) == pytest.approx(5 / 7)
    assert cpm([match_scan("C", [((0, 0, 0), 0.5)], [])]) is None  # no reference nodule: undefined


def test_reader_agreement_on_hand_made_masks():
    """Nodule 1 on a line of voxels: consensus x 0..3, reader 1 x 0..3, reader 2 x 1..4, model x 0..1.
    Reader vs reader 2*3/8 = 0.75; model vs consensus 2*2/6; vs reader 1 2*2/6, vs reader 2 2*1/6 (mean 0.5).
    Nodule 2, marked by reader 1 only and missed by the model: Dice 0 and no reader-vs-reader value."""
    from monai_pipeline.evaluation import nodule_agreement

    shape = (12, 3, 6)
    cons, r1, r2, model = (np.zeros(shape, np.uint8) for _ in range(4))
    cons[0:4, 1, 1] = r1[0:4, 1, 1] = 1
    r2[1:5, 1, 1] = 1
    model[0:2, 1, 1] = 1
    cons[8:11, 1, 4] = r1[8:11, 1, 4] = 1
    rows = sorted(nodule_agreement(model, cons, [r1, r2]), key=lambda r: r["n_readers"], reverse=True)
    first, second = rows
    assert first["n_readers"] == 2 and first["reader_vs_reader"] == pytest.approx(0.75)
    assert first["model_vs_consensus"] == pytest.approx(4 / 6)
    assert first["model_vs_readers"] == pytest.approx((4 / 6 + 2 / 6) / 2)
    assert second["n_readers"] == 1 and second["reader_vs_reader"] is None
    assert second["model_vs_consensus"] == 0.0 and second["model_vs_readers"] == 0.0


def test_summary_json_is_strict_json():
    from monai_pipeline.evaluation import dumps_strict

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    text = dumps_strict({"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32(0.5)})
    assert json.loads(text, parse_constant=refuse) == {"a": None, "b": [1.0, None], "c": 0.5}


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
