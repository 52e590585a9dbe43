"""bench_shape_filter's rule for the cut: fewest false positives without losing sensitivity, else no filter."""

from __future__ import annotations

from tests.helpers import load_benchmark


def _choose(rows):
    mod = load_benchmark("bench_shape_filter")
    return mod.choose([{"cut": c, "sensitivity": s, "fp_per_scan": f} for c, s, f in rows])


def test_the_cut_that_removes_most_false_positives_without_losing_a_nodule():
    assert _choose([(0, 0.8, 3.0), (1.5, 0.7, 1.0), (2.0, 0.8, 2.0), (2.5, 0.8, 2.5)]) == 2.0
    assert _choose([(0, 0.8, 3.0), (1.5, 0.8, 2.0), (2.0, 0.8, 2.0)]) == 2.0, "the loosest on a tie"
    assert _choose([(0, 0.8, 3.0), (1.5, 0.7, 1.0), (2.0, 0.8, 3.0)]) == 0.0, "no cut helps without a loss"
