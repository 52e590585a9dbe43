"""Detection scoring as LUNA16 does it: hit rule, FROC, CPM, and the LUNA16 candidate file.

* A *candidate* is a predicted lesion: its centre (world mm, LPS) and score (the lesion table's ``score``, the
  maximum foreground probability).
* A candidate is a hit on a reference nodule when its centre lies within R of the nodule's centre,
  R = the nodule's diameter / 2 (the nearest nodule when several qualify). Several hits on one nodule count
  once (its highest score). A candidate hitting no nodule but an *irrelevant finding* (LIDC: nodules marked by
  fewer readers than the reference standard asks, nodules < 3 mm) counts neither way; any other is a false
  positive.
* FROC: for every score threshold t, sensitivity (nodules hit by a candidate scoring >= t / all nodules) against
  false positives per scan (false-positive candidates scoring >= t / scans); the lowest point is joined to (0, 0).
* CPM: the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan, interpolated on the curve
  (beyond its last point, the last sensitivity).
* 95 % interval of the CPM: bootstrap over scans (all candidates of a scan together), 1,000 resamples.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monai_pipeline.io.writer import atomic_path

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LUNA16_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
#: radius (mm) of a finding recorded without a diameter (LIDC nodules < 3 mm are marked by one point): half of 3 mm
#: would demand a candidate centre within 1.5 mm of a reader's click, so we use 3 mm, stated in docs/evaluation.md
POINT_FINDING_RADIUS_MM = 3.0


@dataclass
class Finding:
    """A reference nodule or an irrelevant finding: centre (mm, LPS) and radius (mm)."""

    centre: tuple[float, float, float]
    radius_mm: float
    label: str = ""


@dataclass
class ScanDetections:
    """What one scan contributes: per reference nodule its best hit score (None: missed), false-positive scores,
    and how many candidates were ignored (irrelevant findings)."""

    case_id: str
    nodule_scores: list[float | None] = field(default_factory=list)
    fp_scores: list[float] = field(default_factory=list)
    ignored: int = 0

    def record(self, nodule: int | None, score: float) -> None:
        """A candidate scoring ``score`` that hits reference nodule ``nodule`` (its best hit counts) or, for None,
        a false positive."""
        if nodule is None:
            self.fp_scores.append(float(score))
        else:
            prev = self.nodule_scores[nodule]
            self.nodule_scores[nodule] = float(score) if prev is None else max(prev, float(score))


def hit_nodule(centre: Sequence[float], nodules: Sequence[Finding]) -> int | None:
    """The index of the reference nodule a candidate centred at ``centre`` (mm) hits by the module docstring's
    rule (the nearest of those within their radius), or None."""
    if not nodules:
        return None
    ncent = np.asarray([n.centre for n in nodules], dtype=np.float64).reshape(-1, 3)
    nrad = np.asarray([n.radius_mm for n in nodules], dtype=np.float64)
    d = np.linalg.norm(ncent - np.asarray(centre, dtype=np.float64), axis=1)
    hits = np.flatnonzero(d <= nrad)
    return int(hits[np.argmin(d[hits])]) if len(hits) else None


def match_scan(case_id: str, candidates: Sequence[tuple[Sequence[float], float]], nodules: Sequence[Finding],
               irrelevant: Sequence[Finding] = ()) -> ScanDetections:
    """Apply the hit rule of the module docstring to one scan's candidates ``(centre mm, score)``."""
    out = ScanDetections(case_id, [None] * len(nodules))
    icent = np.asarray([f.centre for f in irrelevant], dtype=np.float64).reshape(-1, 3)
    irad = np.asarray([f.radius_mm for f in irrelevant], dtype=np.float64)
    for centre, score in candidates:
        c = np.asarray(centre, dtype=np.float64)
        k = hit_nodule(c, nodules)
        if k is None and len(irad) and np.any(np.linalg.norm(icent - c, axis=1) <= irad):
            out.ignored += 1
        else:
            out.record(k, score)
    return out


def froc_curve(scans: Sequence[ScanDetections]) -> dict[str, np.ndarray]:
    """FROC points over all scans: ``thresholds`` (descending), ``fps_per_scan`` and ``sensitivity`` (ascending
    in FP rate), starting at (0, 0)."""
    n_scans = max(1, len(scans))
    nod = np.asarray([s for sc in scans for s in sc.nodule_scores if s is not None], dtype=np.float64)
    n_nodules = sum(len(sc.nodule_scores) for sc in scans)
    fps = np.asarray([s for sc in scans for s in sc.fp_scores], dtype=np.float64)
    thresholds = np.unique(np.concatenate([nod, fps]))[::-1]
    sens = np.asarray([np.count_nonzero(nod >= t) for t in thresholds], dtype=np.float64) / max(n_nodules, 1)
    rate = np.asarray([np.count_nonzero(fps >= t) for t in thresholds], dtype=np.float64) / n_scans
    return {"thresholds": np.concatenate([[np.inf], thresholds]), "fps_per_scan": np.concatenate([[0.0], rate]),
            "sensitivity": np.concatenate([[0.0], sens]), "n_nodules": n_nodules, "n_scans": len(scans)}


def sensitivity_at(curve: dict, rates: Sequence[float] = FP_RATES) -> list[float]:
    """Sensitivity at each FP rate, linearly interpolated on the FROC curve (the last value beyond its end).
    Where several points share an FP rate the best sensitivity at that rate counts (the curve's upper envelope)."""
    x, y = np.asarray(curve["fps_per_scan"]), np.asarray(curve["sensitivity"])
    ux = np.unique(x)
    uy = np.asarray([y[x == v].max() for v in ux])
    return [float(np.interp(r, ux, uy)) for r in rates]


def cpm(scans: Sequence[ScanDetections]) -> float | None:
    """Competition performance metric (mean sensitivity at :data:`FP_RATES`); None without reference nodules."""
    curve = froc_curve(scans)
    if curve["n_nodules"] == 0:
        return None
    return float(np.mean(sensitivity_at(curve)))


def cpm_bootstrap(scans: Sequence[ScanDetections], n_resamples: int = 1000,
                  seed: int = 0) -> tuple[float | None, float | None]:
    """95 % interval of the CPM, resampling scans with replacement; None where undefined."""
    if len(scans) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        sample = [scans[i] for i in rng.integers(0, len(scans), len(scans))]
        v = cpm(sample)
        if v is not None:
            values.append(v)
    if not values:
        return None, None
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def detection_summary(scans: Sequence[ScanDetections]) -> dict:
    """CPM with its interval, sensitivity at each FP rate, counts."""
    curve = froc_curve(scans)
    low, high = cpm_bootstrap(scans)
    return {"cpm": cpm(scans), "cpm_ci95_low": low, "cpm_ci95_high": high,
            "sensitivity_at_fp_rates": dict(zip([str(r) for r in FP_RATES], sensitivity_at(curve), strict=True))
            if curve["n_nodules"] else None,
            "n_nodules": curve["n_nodules"], "n_scans": curve["n_scans"],
            "n_candidates": sum(len(s.fp_scores) + sum(v is not None for v in s.nodule_scores) for s in scans),
            "n_ignored_candidates": sum(s.ignored for s in scans), "hit_rule": "centre within diameter / 2"}


def froc_csv(curve: dict) -> str:
    """``threshold, fps_per_scan, sensitivity`` rows of the curve."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["threshold", "fps_per_scan", "sensitivity"])
    for t, f, s in zip(curve["thresholds"], curve["fps_per_scan"], curve["sensitivity"], strict=True):
        w.writerow(["inf" if not np.isfinite(t) else f"{t:.6g}", f"{f:.6g}", f"{s:.6g}"])
    return buf.getvalue()


def candidates_csv(rows: Sequence[tuple[str, Sequence[float], float]]) -> str:
    """LUNA16's candidate format: ``seriesuid, coordX, coordY, coordZ, probability`` in world mm (the scan
    header's physical space, LPS as ITK/DICOM store it)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(LUNA16_COLUMNS)
    for uid, (x, y, z), p in rows:
        w.writerow([uid, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f"{p:.15g}"])
    return buf.getvalue()


def plot_froc(curve: dict, cpm_value: float | None, path: Path) -> None:
    """``froc.png``: sensitivity against FPs per scan (log axis) with the CPM's operating points."""
    import matplotlib  # deferred: 0.4 s of import, needed only when a picture is drawn (matplotlib.use first)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=90)
    # the curve stays flat beyond its last operating point (as the CPM reads it): drawn to the plot's edge
    x = np.append(np.maximum(curve["fps_per_scan"], 1e-3), 16.0)
    ax.step(x, np.append(curve["sensitivity"], curve["sensitivity"][-1]), where="post", color="tab:blue", label="FROC")
    ax.plot(FP_RATES, sensitivity_at(curve), "o", color="tab:orange", label="CPM points")
    ax.set_xscale("log")
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    title = f"CPM {cpm_value:.3f}" if cpm_value is not None else "CPM undefined (no reference nodules)"
    ax.set_title(f"{title}; {curve['n_nodules']} nodules, {curve['n_scans']} scans", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
