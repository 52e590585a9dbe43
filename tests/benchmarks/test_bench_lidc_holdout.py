"""bench_lidc_holdout takes reads of patients the demo's studies do not hold, one study per patient."""

from __future__ import annotations

from tests.helpers import load_benchmark


def test_fresh_reads_skip_known_patients_and_repeats():
    mod = load_benchmark("bench_lidc_holdout")
    patient = {"a1": "A", "b1": "B", "b2": "B", "c1": "C", "d1": "D", "e1": "E"}
    got = mod.fresh_reads(["a1", "b1", "b2", "c1", "d1", "e1"], {"A", "C"}, patient.get, 2)
    assert got == ["b1", "d1"]
    assert mod.fresh_reads(["a1", "c1"], {"A", "C"}, patient.get, 5) == []
