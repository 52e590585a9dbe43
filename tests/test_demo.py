"""``demo --seeds N``: one synthetic data set, one training per seed, and the figures' mean and spread (a run of
two epochs: the mechanics, not the model, are under test; ``make demo`` is the real run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_pipeline.cli import main

pytestmark = pytest.mark.slow  # trains twice


def test_demo_over_two_seeds(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--seeds", "2", "--epochs", "2", "--out", str(out)]) == 0
    seeds = json.loads((out / "seeds.json").read_text())
    dice = [json.loads((out / f"seed_{s}" / "report" / "summary.json").read_text())["metrics"]["dice"]["mean"]
            for s in (0, 1)]
    assert seeds["seeds"] == [0, 1] and seeds["mean"]["dice_mean"] == pytest.approx(np.mean(dice))
    assert seeds["std"]["dice_mean"] == pytest.approx(np.std(dice, ddof=1))
    for s in (0, 1):
        assert (out / f"seed_{s}" / "run" / "model.pt").is_file() and (out / f"seed_{s}" / "report.html").is_file()
    assert len(list((out / "data" / "images").glob("*.nii.gz"))) == 5, "one data set for both seeds"
