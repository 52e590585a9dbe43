"""The batch runner's own tables (timings, failures) across runs."""

from __future__ import annotations

import csv

from monai_pipeline.data.manifest import load_manifest
from monai_pipeline.inference import Predictor, run_batch
from tests.helpers import tiny_model_file


def test_overwrite_starts_the_run_tables_afresh(tiny_dataset, tmp_path):
    """--overwrite predicts every case again: timings.csv holds this run's rows only, not the earlier run's too."""
    model = tiny_model_file(tmp_path / "model.pt")
    cases = [(e["case_id"], e["image"]) for e in load_manifest(tiny_dataset / "manifest.json", "training")][:2]
    for _ in range(2):
        run_batch(Predictor(model, device="cpu"), cases, tmp_path / "out", progress=False, overwrite=True)
    with open(tmp_path / "out" / "timings.csv") as fh:
        assert sorted(r["case_id"] for r in csv.DictReader(fh)) == sorted(c for c, _ in cases)
