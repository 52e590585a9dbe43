"""The golden test: ``infer`` (and ``postprocess``) on a fixed model and fixed inputs give exactly the stored
outputs. It guards structural changes: a refactor that changes no behaviour leaves every hash as it was.
Regenerate only when a change of output is intended (``python tests/integration/golden/golden_outputs.py
--write``), and say why in the commit."""

from __future__ import annotations

import json

import pytest

from tests.integration.golden.golden_outputs import GOLDEN, collect, make_inputs, run_infer

pytestmark = pytest.mark.slow


def test_outputs_equal_the_golden_hashes(tmp_path):
    expected = json.loads(GOLDEN.read_text())
    run_infer(make_inputs(tmp_path / "in"), tmp_path / "out")
    got = collect(tmp_path / "out")
    assert sorted(got) == sorted(expected), "the set of output files changed"
    changed = [name for name in expected if got[name] != expected[name]]
    assert not changed, f"outputs differ from the golden ones: {changed}"
