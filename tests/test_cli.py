"""Every bad input gets one line naming the file and the problem, exit code 2, and no output."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli

CT5N = "dicomdirtests/98892001/CT5N"


def _assert_clean_failure(r, path, problem, out):
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = r.stderr.strip()
    assert "\n" not in line, line
    assert str(path) in line and problem in line, line
    assert not out.exists()


@pytest.mark.parametrize("name,problem", [
    ("dicomdirtests/77654033/CT2", "non-uniform slice spacing"),
    ("dicomdirtests/98892001/CT2N", "mixes slice orientations"),
    ("MR_small.dcm", "modality is MR, not CT"),
])
def test_convert_bad_pydicom_inputs(tmp_path, pydicom_dir, name, problem):
    path = pydicom_dir / name
    out = tmp_path / "out.nii.gz"
    _assert_clean_failure(run_cli("convert", "--input", path, "--out", out), path, problem, out)


def test_convert_missing_corrupt_and_empty(tmp_path):
    out = tmp_path / "out.nii.gz"
    _assert_clean_failure(run_cli("convert", "--input", tmp_path / "nope", "--out", out),
                          tmp_path / "nope", "does not exist", out)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    _assert_clean_failure(run_cli("convert", "--input", bad, "--out", out), bad, "DICOM", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_clean_failure(run_cli("convert", "--input", empty, "--out", out), empty, "no DICOM image files", out)


def test_convert_good_series_and_forced_options(tmp_path, pydicom_dir):
    out = tmp_path / "ct.nii.gz"
    r = run_cli("convert", "--input", pydicom_dir / CT5N, "--out", out)
    assert r.returncode == 0 and out.exists()
    r = run_cli("convert", "--input", pydicom_dir / "dicomdirtests/77654033/CT2", "--out", tmp_path / "ct2.nii.gz",
                "--resample-nonuniform")
    assert r.returncode == 0 and (tmp_path / "ct2.nii.gz").exists()
    r = run_cli("convert", "--input", pydicom_dir / "MR_small.dcm", "--out", tmp_path / "mr.nii.gz", "--force")
    assert r.returncode == 0


def test_bad_config_and_arguments(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("inference: {overlap: 2}\n")
    (tmp_path / "m.json").write_text('{"training": []}')
    r = run_cli("train", "--manifest", tmp_path / "m.json", "--out", tmp_path / "run", "--config", cfg)
    assert r.returncode == 2 and "inference.overlap must be >= 0 and < 1, got 2" in r.stderr
    assert not (tmp_path / "run").exists()
    r = run_cli("synth", "--out", tmp_path / "s", "--cases", "0")
    assert r.returncode == 2 and not (tmp_path / "s").exists()
    r = run_cli("infer", "--model", cfg, "--input", cfg, cfg, "--out", tmp_path / "i", "--workers", "0")
    assert r.returncode == 2 and "--workers: must be >= 1, got 0" in r.stderr and not (tmp_path / "i").exists()
    r = run_cli("--version")
    assert r.returncode == 0 and "monai-pipeline" in r.stdout
