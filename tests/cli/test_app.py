"""The command line as a user meets it: help for everything, output options after the verb, one line and a
distinct exit code for each kind of failure."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_pipeline.cli import build_parser, main
from monai_pipeline.cli.app import EXIT_INTERNAL, VERBS
from tests.helpers import run_cli, tiny_model_file


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_verb_has_a_description_and_every_option_help():
    missing = [f"{name} {a.option_strings or a.dest}" for name, sp in _subparsers().items() for a in sp._actions
               if not a.help]
    assert not missing, missing
    assert all(sp.description for sp in _subparsers().values())


@pytest.mark.parametrize("argv", [["-v", "report", "x"], ["report", "x", "-v"], ["report", "-q", "x"]])
def test_output_options_before_or_after_the_verb(argv):
    a = build_parser().parse_args(argv)
    assert a.command == "report" and (a.verbose or a.quiet)
    assert not (a.verbose and a.quiet)


def test_quiet_hides_info_and_verbose_shows_library_info(tmp_path):
    main(["-q", "report", str(tmp_path / "missing")])
    assert logging.getLogger().level == logging.WARNING
    main(["report", str(tmp_path / "missing"), "-v"])
    assert logging.getLogger().level == logging.DEBUG


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_device_cuda_without_a_gpu_is_one_line_before_any_work(tmp_path):
    model = tiny_model_file(tmp_path / "m.pt")
    out = tmp_path / "out"
    r = run_cli("infer", "--model", model, "--input", model, "--out", out, "--device", "cuda")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--device cuda: no CUDA GPU is available" in r.stderr
    assert not out.exists()


def test_an_internal_error_has_its_own_exit_code(monkeypatch, capsys):
    def broken(a):
        raise KeyError("a bug")

    verb = VERBS["report"]
    monkeypatch.setitem(VERBS, "report", type(verb)(verb.name, verb.help, verb.add_arguments, broken))
    assert main(["report", "."]) == EXIT_INTERNAL == 70
    assert "internal error: KeyError" in capsys.readouterr().err


def test_python_dash_m_runs_the_command():
    r = subprocess.run([sys.executable, "-m", "monai_pipeline", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("monai-pipeline ")


def test_force_is_still_accepted_as_allow_non_ct():
    a = build_parser().parse_args(["convert", "--input", "x", "--out", "y.nii.gz", "--force"])
    b = build_parser().parse_args(["convert", "--input", "x", "--out", "y.nii.gz", "--allow-non-ct"])
    assert a.allow_non_ct and b.allow_non_ct


@pytest.fixture(scope="module")
def three_volumes(tmp_path_factory):
    """A folder holding three NIfTI volumes (and a hidden file an OS leaves)."""
    from tests.integration.golden.golden_outputs import make_inputs

    root = tmp_path_factory.mktemp("vols")
    batch = make_inputs(root / "made")["batch"]
    folder = root / "scans"
    folder.mkdir()
    for p in batch:
        (folder / Path(p).name).write_bytes(Path(p).read_bytes())
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return folder


def test_a_folder_of_nifti_files_is_a_batch(tmp_path, three_volumes):
    from tests.integration.golden.golden_outputs import MODEL

    out = tmp_path / "out"
    assert main(["infer", "--model", str(MODEL), "--input", str(three_volumes), "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(p.name for p in three_volumes.glob("*.nii.gz"))


def test_out_as_a_mask_file_for_one_input(tmp_path, three_volumes):
    import SimpleITK as sitk

    from tests.integration.golden.golden_outputs import MODEL

    ct = sorted(three_volumes.glob("*.nii.gz"))[0]
    target = tmp_path / "results" / "my_mask.nii.gz"
    assert main(["infer", "--model", str(MODEL), "--input", str(ct), "--out", str(target)]) == 0
    assert target.is_file() and (tmp_path / "results" / "my_mask_lesions.csv").is_file()
    assert sitk.ReadImage(str(target)).GetSize() == sitk.ReadImage(str(ct)).GetSize()
    assert main(["infer", "--model", str(MODEL), "--input", str(ct), str(ct), "--out", str(tmp_path / "x.nii.gz")]) == 2
