"""The MONAI model zoo's own CI (Project-MONAI/model-zoo ``ci/``) on the bundle, through ``scripts/zoo_ci.sh``:
requirements, the zoo's pre-commit hooks, ``verify_bundle.py -m min`` (failing only at the download of weights
this project does not host) and ``-m full``, and the zoo's unit-test runner with this bundle's test module.

The zoo's scripts are not copied into this repository: the test needs a model-zoo checkout, named by
``MODEL_ZOO`` (a folder with ``ci/``, or its git directory), or the snapshot a developer machine keeps beside
the project; it is skipped, with how to get one, when there is none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED

pytestmark = pytest.mark.slow

SCHEMA = SHARED / "reference" / "monai_bundle_meta_schema_20240725.json"
SNAPSHOT = REPO.parent / ".mirror" / "Project-MONAI+model-zoo" / "repo"


def _zoo() -> Path | None:
    named = os.environ.get("MODEL_ZOO")
    for cand in ([Path(named)] if named else []) + [SNAPSHOT]:
        if (cand / "ci").is_dir() or (cand / "HEAD").is_file():
            return cand
    return None


@pytest.mark.skipif(_zoo() is None, reason="no model-zoo checkout: git clone https://github.com/Project-MONAI/"
                    "model-zoo and set MODEL_ZOO to it")
@pytest.mark.skipif(not SCHEMA.is_file(), reason="the metadata schema (../shared/reference) is not present")
def test_model_zoo_ci_passes(tmp_path):
    env = {**os.environ, "SCHEMA": str(SCHEMA), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           # the suite's interpreter (with MONAI) and its console scripts (the zoo's hooks), not what PATH has first
           "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "zoo_ci.sh"), str(_zoo()), "", str(tmp_path / "zoo")],
                       capture_output=True, text=True, env=env, timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "ValueError: Download large files" in out  # -m min without weights: the one expected failure
    for line in ("Would install", "pretty-format-json: passed", "metadata format is verified correctly",
                 "data shape is verified correctly", "export weights into TorchScript module successfully",
                 "verify_net_in_out n=1: passed",
                 "Ran 2 tests", "all zoo checks passed"):
        assert line in out, line
