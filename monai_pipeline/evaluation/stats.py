"""Summaries of per-case values: bootstrap confidence intervals inside the metric's range, strict JSON.

A Student-t interval on a handful of cases can leave the metric's range (two cases gave Dice -5.85 to 6.85);
a percentile bootstrap of the mean (``scipy.stats.bootstrap``, resampling cases) cannot: every resampled mean
lies between the smallest and largest value. Undefined values are ``None`` (JSON ``null``), never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from monai_pipeline.io.writer import dumps_strict, json_safe  # noqa: F401 - re-exported (they lived here before)

#: resamples of the bootstrap, and the seed that makes every report reproducible
N_RESAMPLES, SEED = 2000, 0


def finite(values: Sequence[float | None]) -> np.ndarray:
    """The finite values of ``values`` (``None`` and NaN dropped) as float64."""
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)


def bootstrap_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile-bootstrap interval of the mean of ``values`` (cases resampled); ``(None, None)`` below two
    values. All values equal gives that value twice."""

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return None, None
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    res = stats.bootstrap((v,), np.mean, confidence_level=confidence, n_resamples=N_RESAMPLES, method="percentile",
                          random_state=np.random.default_rng(SEED), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """mean, median, std (ddof=1), 95 % bootstrap interval of the mean, and ``n`` (the number of finite values
    the numbers are over); ``None`` where undefined."""
    v = finite(values)
    n = len(v)
    if n == 0:
        return {"mean": None, "median": None, "std": None, "ci95_low": None, "ci95_high": None, "n": 0}
    low, high = bootstrap_ci(v)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std(ddof=1)) if n > 1 else None,
            "ci95_low": low, "ci95_high": high, "n": n}
