"""The second-stage candidate classifier: its features from lesion-table rows, its fit against an independent
solution of the same problem, that it ranks held-out candidates it was not fitted on, and its stored form."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from monai_pipeline.config import load_config
from monai_pipeline.errors import ConfigError
from monai_pipeline.postprocess.candidates import (
    CANDIDATE_FEATURES,
    CandidateClassifier,
    candidate_features,
    check_classifier,
    fit_classifier,
    rescore,
)


def _row(volume, elongation, mean_hu, network_score, longest=None):
    eq = (6 * volume / np.pi) ** (1 / 3)
    return {"volume_mm3": volume, "elongation": elongation, "mean_hu": mean_hu, "max_hu": mean_hu + 100,
            "network_score": network_score, "score": network_score, "longest_axial_diameter_mm": longest or eq,
            "equivalent_diameter_mm": eq}


def _candidates(rng, n_nodules, n_vessels):
    """Nodules: round, 5-15 mm, solid; vessels: elongated (2-5), smaller, as confident to the network."""
    nod = []
    for _ in range(n_nodules):
        d = rng.uniform(5, 15)
        nod.append(_row(np.pi / 6 * d ** 3, rng.uniform(1.0, 1.5), rng.uniform(-100, 50), rng.uniform(0.9, 1 - 1e-6),
                        longest=d * rng.uniform(1.0, 1.3)))
    ves = [_row(rng.uniform(15, 300), rng.uniform(2.0, 5.0), rng.uniform(0, 60), rng.uniform(0.9, 1 - 1e-6))
           for _ in range(n_vessels)]  # longest axial diameter: the equivalent one (a vessel seen end-on)
    return nod + ves, [True] * n_nodules + [False] * n_vessels


def test_features_are_the_documented_units():
    r = _row(volume=np.pi / 6 * 1000.0, elongation=1.5, mean_hu=-50.0, network_score=0.75, longest=20.0)
    f = candidate_features([r])[0]
    assert dict(zip(CANDIDATE_FEATURES, f, strict=True)) == pytest.approx({
        "log_volume_mm3": np.log(np.pi / 6 * 1000.0), "elongation": 1.5, "mean_hu": -0.5, "max_hu": 0.5,
        "score_logit": np.log(3.0), "diameter_ratio": 2.0})  # equivalent diameter 10 mm
    with pytest.raises(ValueError, match="HU"):
        candidate_features([{**r, "mean_hu": float("nan")}])


def test_fit_matches_an_independent_solution_of_the_same_problem():
    """The analytic gradient and L-BFGS fit against a direct minimisation (numerical gradients, Nelder-Mead free
    of any code under test) of the class-balanced, L2-penalised logistic loss on the same standardised data."""
    rng = np.random.default_rng(0)
    rows, y = _candidates(rng, 8, 40)
    y = np.asarray(y, float)
    clf = fit_classifier(rows, y, l2=1.0)
    x = candidate_features(rows)
    z = (x - x.mean(0)) / np.where(x.std(0) > 1e-9, x.std(0), 1.0)
    sw = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum())))

    def loss(w):
        t = z @ w[:-1] + w[-1]
        return float((sw * (y * np.logaddexp(0, -t) + (1 - y) * np.logaddexp(0, t))).sum() + (w[:-1] ** 2).sum() / 2)

    ref = minimize(loss, np.zeros(z.shape[1] + 1), method="BFGS", options={"gtol": 1e-8}).x
    assert np.asarray(clf.weights) == pytest.approx(ref[:-1], abs=1e-3)
    assert clf.bias == pytest.approx(ref[-1], abs=1e-3)
    assert (clf.n_positive, clf.n_negative) == (8, 40)


def test_ranks_held_out_nodules_above_vessels_the_network_ties_them_with():
    rng = np.random.default_rng(1)
    clf = fit_classifier(*_candidates(rng, 10, 60))
    rows, y = _candidates(rng, 10, 60)  # fresh draws: not fitted on
    p = clf.predict(rows)
    y = np.asarray(y)
    auc = np.mean(p[y][:, None] > p[~y][None, :])
    assert auc > 0.95
    net = np.asarray([r["network_score"] for r in rows])
    assert np.mean(net[y][:, None] > net[~y][None, :]) < 0.8  # the network's own score does not separate them


def test_one_class_fits_nothing():
    rows, _ = _candidates(np.random.default_rng(2), 0, 5)
    assert fit_classifier(rows, [False] * 5) is None


def test_stored_form_round_trips_and_bad_forms_are_refused():
    clf = fit_classifier(*_candidates(np.random.default_rng(3), 5, 20))
    data = clf.to_dict()
    assert data["features"] == list(CANDIDATE_FEATURES)
    assert CandidateClassifier.from_dict(data) == clf
    with pytest.raises(ConfigError, match="features"):
        CandidateClassifier.from_dict({**data, "features": ["volume"]})
    with pytest.raises(ConfigError, match="not a valid classifier"):
        CandidateClassifier.from_dict({k: v for k, v in data.items() if k != "bias"})
    with pytest.raises(ConfigError, match="positive scales"):
        CandidateClassifier.from_dict({**data, "scale": [0.0] * len(CANDIDATE_FEATURES)})
    # what the predictor checks before any work (a model file's inference.candidate_classifier)
    with pytest.raises(ConfigError, match="candidate_classifier"):
        check_classifier({**data, "weights": [1.0]})
    check_classifier(None)
    assert load_config({"inference": {"candidate_classifier": data}}).inference.candidate_classifier == data


def test_rescore_replaces_the_score_and_keeps_the_network_score():
    rows, _ = _candidates(np.random.default_rng(4), 3, 3)
    clf = fit_classifier(rows, [True] * 3 + [False] * 3)
    out = rescore(rows, clf.to_dict())
    assert [r["score"] for r in out] == pytest.approx(clf.predict(rows).tolist())
    assert [r["network_score"] for r in out] == [r["network_score"] for r in rows]
    assert rescore(rows, None) is rows
