"""bench_lidc_holdout takes reads of patients the demo's studies do not hold, one study per patient."""

from __future__ import annotations

from tests.helpers import load_benchmark


def test_fresh_reads_skip_known_patients_and_repeats():
    mod = load_benchmark("bench_lidc_holdout")
    patient = {"a1": "A", "b1": "B", "b2": "B", "c1": "C", "d1": "D", "e1": "E"}
    got = mod.fresh_reads(["a1", "b1", "b2", "c1", "d1", "e1"], {"A", "C"}, patient.get, 2)
    assert got == ["b1", "d1"]
    assert mod.fresh_reads(["a1", "c1"], {"A", "C"}, patient.get, 5) == []


def test_results_of_later_calls_join_earlier_ones(tmp_path):
    """Each call adds its settings to results.json and results.md; a name scored again is replaced, the others
    are kept; each entry records the versions (git revision) that scored it."""
    import json

    mod = load_benchmark("bench_lidc_holdout")

    def figures(v):
        return {"folder": "x", "per_seed": {}, **{f: {"mean": v, "sd": None} for f in mod.FIGURES}}

    mod.write_results(tmp_path, {"a": figures(0.1)})
    mod.write_results(tmp_path, {"b": figures(0.2)})
    table = mod.write_results(tmp_path, {"a": figures(0.3)})
    every = json.loads((tmp_path / "results.json").read_text())
    assert set(every) == {"a", "b"} and every["a"]["nodule_dice"]["mean"] == 0.3
    assert "| a | 0.300" in table and "| b | 0.200" in table
    assert (tmp_path / "results.md").read_text() == table
    from monai_pipeline.model_file import versions

    assert every["b"]["versions"] == versions() and every["a"]["scored_utc"].endswith("+00:00")
