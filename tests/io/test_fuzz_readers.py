"""Bounded fuzzing of the NIfTI and DICOM readers (Hypothesis, derandomised): clean errors or volumes an
independent reader confirms; never a hang (the whole run is under a hard time limit, each read under 10 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("hypothesis")


def test_fuzzed_headers_and_bytes_give_clean_errors_or_correct_volumes(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tests.io.fuzz_readers", str(tmp_path), "60"], capture_output=True,
                       text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, (r.stdout[-3000:] + r.stderr[-6000:])
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith("nifti") and "refused" in summary and "accepted" in summary, summary
