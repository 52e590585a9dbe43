"""Second-stage false-positive reduction: a classifier that re-scores each candidate lesion.

The network's own score (a lesion's maximum foreground probability) saturates near 1 for any confident blob, so
vessel cross-sections and branchings, noise specks in the parenchyma and real nodules tie at the top and no
threshold separates them. LUNA16's strongest systems add a second stage on the candidates; this one is the
feature form of it: an L2-regularised, class-balanced logistic regression over each candidate's row of the
lesion table (:data:`CANDIDATE_FEATURES`), fitted on candidates matched to reference nodules by the LUNA16 hit
rule (positives) or to nothing (false positives).

Features, all from :func:`~monai_pipeline.postprocess.lesions.lesion_table` (input grid, mm and HU):

* ``log_volume_mm3``: natural log of the volume (mm3);
* ``elongation``: square root of the largest over the middle principal moment (1 = round or flat; vessels 2-5);
* ``mean_hu``, ``max_hu``: the component's density in HU / 100;
* ``score_logit``: logit of the network's score, clipped to [1e-7, 1 - 1e-7];
* ``diameter_ratio``: longest axial diameter / equivalent-sphere diameter (1 = compact; long or flat > 1).

The classifier is plain data (:meth:`CandidateClassifier.to_dict`), stored in a model file as
``inference.candidate_classifier``; ``monai_pipeline.calibration`` fits it on validation candidates
(``training.fp_reduction``) and chooses the lesion-score threshold on its scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

from monai_pipeline.errors import ConfigError

CANDIDATE_FEATURES = ("log_volume_mm3", "elongation", "mean_hu", "max_hu", "score_logit", "diameter_ratio")
#: the lesion-table columns the features are computed from
FEATURE_COLUMNS = ("volume_mm3", "elongation", "mean_hu", "max_hu", "network_score", "longest_axial_diameter_mm",
                   "equivalent_diameter_mm")
_EPS = 1e-7


def candidate_features(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The (N, 6) feature matrix of :data:`CANDIDATE_FEATURES` for lesion-table rows (units in the module
    docstring). Rows need :data:`FEATURE_COLUMNS`, with a numeric ``network_score`` and HU."""
    out = np.zeros((len(rows), len(CANDIDATE_FEATURES)), dtype=np.float64)
    for i, r in enumerate(rows):
        s = min(max(float(r["network_score"]), _EPS), 1 - _EPS)
        out[i] = (np.log(max(float(r["volume_mm3"]), _EPS)), float(r["elongation"]), float(r["mean_hu"]) / 100,
                  float(r["max_hu"]) / 100, np.log(s / (1 - s)),
                  float(r["longest_axial_diameter_mm"]) / max(float(r["equivalent_diameter_mm"]), _EPS))
    if not np.all(np.isfinite(out)):
        raise ValueError("candidate features need each lesion's HU (mean_hu, max_hu) and network_score")
    return out


@dataclass(frozen=True)
class CandidateClassifier:
    """Logistic regression on standardised :data:`CANDIDATE_FEATURES`: p = sigmoid(w . (x - mean) / scale + b).

    ``n_positive``/``n_negative``: the candidates it was fitted on; ``l2``: its regularisation strength."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    l2: float
    n_positive: int
    n_negative: int

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Decision values for an (N, 6) feature matrix."""
        z = (np.asarray(features, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.weights) + self.bias

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Each row's probability of being a nodule, in [0, 1]."""
        if not rows:
            return np.zeros(0)
        z = self.logits(candidate_features(rows))
        return np.exp(-np.logaddexp(0.0, -z))  # sigmoid without overflow

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what a model file stores), with the feature names it expects."""
        return {"features": list(CANDIDATE_FEATURES), **{k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in asdict(self).items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CandidateClassifier:
        """Read :meth:`to_dict`'s form back; ConfigError naming what is wrong."""
        where = "inference.candidate_classifier"
        if list(data.get("features", [])) != list(CANDIDATE_FEATURES):
            raise ConfigError(f"{where} was fitted on features {data.get('features')}, this version computes "
                              f"{list(CANDIDATE_FEATURES)}")
        try:
            clf = cls(**{k: tuple(float(x) for x in data[k]) for k in ("mean", "scale", "weights")},
                      bias=float(data["bias"]), l2=float(data["l2"]), n_positive=int(data["n_positive"]),
                      n_negative=int(data["n_negative"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{where} is not a valid classifier ({err.__class__.__name__}: {err})") from err
        n = len(CANDIDATE_FEATURES)
        if len(clf.mean) != n or len(clf.scale) != n or len(clf.weights) != n or min(clf.scale) <= 0:
            raise ConfigError(f"{where} needs {n} means, positive scales and weights")
        return clf


def _objective(w: np.ndarray, z: np.ndarray, y: np.ndarray, sample_weight: np.ndarray,
               l2: float) -> tuple[float, np.ndarray]:
    """Weighted logistic loss plus ``l2``/2 |w|^2 (bias unpenalised) and its gradient; ``z`` has a bias column."""
    t = z @ w
    loss = sample_weight * (y * np.logaddexp(0.0, -t) + (1 - y) * np.logaddexp(0.0, t))
    p = np.exp(-np.logaddexp(0.0, -t))
    grad = z.T @ (sample_weight * (p - y))
    penalty = np.r_[w[:-1], 0.0]
    return float(loss.sum() + l2 * (penalty @ penalty) / 2), grad + l2 * penalty


def fit_classifier(rows: Sequence[Mapping[str, Any]], is_nodule: Sequence[bool],
                   l2: float = 1.0) -> CandidateClassifier | None:
    """Fit :class:`CandidateClassifier` to candidates ``rows`` labelled ``is_nodule`` (hit a reference nodule).

    Classes are balanced (each weighs half of the loss, as nodules are a few percent of candidates); features are
    standardised on these rows. None when either class is empty (nothing to separate)."""
    y = np.asarray(is_nodule, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    x = candidate_features(rows)
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.c_[(x - mean) / scale, np.ones(len(x))]
    sample_weight = np.where(y == 1, len(y) / (2 * n_pos), len(y) / (2 * n_neg))
    res = minimize(_objective, np.zeros(z.shape[1]), args=(z, y, sample_weight, l2), jac=True, method="L-BFGS-B")
    return CandidateClassifier(tuple(mean.tolist()), tuple(scale.tolist()), tuple(res.x[:-1].tolist()),
                               float(res.x[-1]), float(l2), n_pos, n_neg)


def check_classifier(classifier: Mapping[str, Any] | None) -> None:
    """ConfigError naming what is wrong with a stored classifier (``inference.candidate_classifier``); None is
    no second stage."""
    if classifier is not None:
        CandidateClassifier.from_dict(classifier)


def rescore(rows: list[dict], classifier: Mapping[str, Any] | None) -> list[dict]:
    """``rows`` with ``score`` replaced by the classifier's probability (``network_score``, the network's own,
    is one of its inputs and stays); unchanged without a classifier."""
    if not classifier or not rows:
        return rows
    probs = CandidateClassifier.from_dict(classifier).predict(rows)
    return [{**r, "score": float(p)} for r, p in zip(rows, probs, strict=True)]
