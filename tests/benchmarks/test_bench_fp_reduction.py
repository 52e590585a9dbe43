"""bench_fp_reduction pairs the network's scores with the cross-fitted second stage on stored candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import load_benchmark


def _cand(rng, hit):
    d = rng.uniform(6, 14) if hit >= 0 else rng.uniform(3, 6)
    return {"volume_mm3": np.pi / 6 * d ** 3, "elongation": rng.uniform(1.0, 1.4) if hit >= 0 else rng.uniform(2, 4),
            "mean_hu": rng.uniform(-100, 50), "max_hu": 100.0, "network_score": rng.uniform(0.99, 1 - 1e-7),
            "longest_axial_diameter_mm": d, "equivalent_diameter_mm": d, "centre": [0.0, 0.0, 0.0], "hit": hit}


def _write_cv(root, seed):
    rng = np.random.default_rng(seed)
    for k in range(2):
        scans = [{"case_id": f"{k}{i}", "n_nodules": 2,
                  "candidates": [_cand(rng, 0), _cand(rng, 1)] + [_cand(rng, -1) for _ in range(5)]}
                 for i in range(4)]
        (root / f"fold_{k}").mkdir(parents=True)
        torch.save({"operating_point": {"candidates": scans}}, root / f"fold_{k}" / "model.pt")


def test_second_stage_separates_what_the_network_ties(tmp_path):
    mod = load_benchmark("bench_fp_reduction")
    _write_cv(tmp_path / "cv", 0)
    res = mod.paired(tmp_path / "cv", fp_per_scan=1.0)
    net, second = res["network"], res["second stage"]
    assert net["nodules"] == second["nodules"] == 16 and net["scans"] == 8
    assert second["cpm"] == 1.0 and second["threshold_sensitivity"] == 1.0  # round vs elongated: separable
    assert net["cpm"] < 0.9  # the network's near-1 scores do not rank them


def test_main_reports_the_spread_and_refuses_old_model_files(tmp_path, capsys):
    mod = load_benchmark("bench_fp_reduction")
    for s in range(2):
        _write_cv(tmp_path / f"cv{s}", s)
    mod.main(["--rank", str(tmp_path / "cv0"), str(tmp_path / "cv1"), "--out", str(tmp_path / "r.json")])
    assert "mean ± sd over 2 | second stage | 1.000 ± 0.000" in capsys.readouterr().out
    torch.save({"operating_point": {"threshold": 0.5}}, tmp_path / "cv1" / "fold_1" / "model.pt")
    with pytest.raises(SystemExit, match="no stored validation candidates"):
        mod.paired(tmp_path / "cv1", 1.0)


def test_seed_table_pairs_off_with_on(capsys):
    mod = load_benchmark("bench_fp_reduction")
    fig = {k: 0.0 for k in mod.FIGURES}
    result = {0: {"off": {**fig, "cpm": 0.1}, "on": {**fig, "cpm": 0.3}},
              1: {"off": {**fig, "cpm": 0.2}, "on": {**fig, "cpm": 0.3}}}
    mod.print_seeds(result)
    assert "| cpm | 0.150 ± 0.071 | 0.300 ± 0.000 | 0.150 ± 0.071 |" in capsys.readouterr().out
    summary = {"reader_agreement": {"model_vs_consensus": {"mean": 0.3}}, "metrics": {"dice": {"mean": 0.2}},
               "lesion_sensitivity_pooled": 0.4, "lesion_false_positives_per_scan": 1.5, "detection": {"cpm": 0.25}}
    assert mod.cv_figures(summary) == {"nodule_dice": 0.3, "case_dice": 0.2, "sensitivity": 0.4,
                                       "fp_per_scan": 1.5, "cpm": 0.25}
