"""The seams: a new output format and a new post-processing step are each one function and one registration (and
the step one configuration key), written here in the test, and ``infer`` uses both without any other file
changing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from monai_pipeline.cli import main
from monai_pipeline.io.formats import MASK_FORMATS, MaskFormat, register_format
from monai_pipeline.io.writer import write_mask
from monai_pipeline.postprocess.steps import STEPS, register_step
from tests.integration.golden.golden_outputs import MODEL, make_inputs

pytestmark = pytest.mark.slow


@pytest.fixture()
def extensions():
    """An ``.mha`` mask format and a ``dilate`` step, registered for the test and removed after it."""

    def write_mha(result, path, provenance):
        return write_mask(result.mask, result.geometry, path)

    @register_step("dilate", reach="dilate_mm")
    def dilate(mask: np.ndarray, ctx, *, dilate_mm: float) -> np.ndarray:
        """Grow every component by about ``dilate_mm`` (whole voxels along the finest axis)."""
        return ndimage.binary_dilation(mask, iterations=max(1, round(dilate_mm / min(ctx.spacing))))

    register_format(MaskFormat("mha", ".mha", write_mha))
    yield
    MASK_FORMATS.pop("mha")
    STEPS.pop("dilate")


def _model_with_step(tmp_path):
    """The golden model with ``postprocess.steps.dilate`` added to its configuration (a config key, nothing else)."""
    blob = torch.load(MODEL, weights_only=True)
    config = dict(blob["config"])
    config["postprocess"] = {**config["postprocess"], "steps": {"dilate": {"dilate_mm": 1.0}}}
    path = tmp_path / "with_dilate.pt"
    torch.save({**blob, "config": config}, path)
    return path


def test_infer_uses_a_format_and_a_step_added_in_the_test(tmp_path, extensions):
    ct = make_inputs(tmp_path / "in")["oblique"][0]
    plain, extended = tmp_path / "plain", tmp_path / "extended"
    assert main(["infer", "--model", str(MODEL), "--input", ct, "--out", str(plain), "--workers", "1",
                 "--keep-without-lungs"]) == 0
    assert main(["infer", "--model", str(_model_with_step(tmp_path)), "--input", ct, "--out", str(extended),
                 "--workers", "1", "--format", "nifti,mha", "--keep-without-lungs"]) == 0
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(plain / "oblique_case.nii.gz"))) > 0
    after = sitk.GetArrayFromImage(sitk.ReadImage(str(extended / "oblique_case.nii.gz"))) > 0
    mha = sitk.ReadImage(str(extended / "oblique_case.mha"))
    assert before.any() and after.sum() > before.sum() and np.all(after[before]), "the dilate step did not run last"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mha) > 0, after)
    assert mha.GetSize() == sitk.ReadImage(ct).GetSize()
    # the resume rule knows the new format: a batch into the same folder skips the finished case
    second = tmp_path / "in" / "second_case.nii.gz"
    second.write_bytes(open(ct, "rb").read())
    assert main(["infer", "--model", str(_model_with_step(tmp_path)), "--input", ct, str(second), "--out",
                 str(extended), "--workers", "1", "--format", "nifti,mha", "--no-progress",
                 "--keep-without-lungs"]) == 0
    summary = json.loads((extended / "summary.json").read_text())
    assert (summary["done"], summary["skipped"]) == (1, 1)
    assert (extended / "second_case.mha").is_file()


def test_the_postprocess_verb_offers_the_new_step_as_flags(tmp_path, extensions):
    from monai_pipeline.cli import build_parser

    args = build_parser().parse_args(["postprocess", "--input", "m.nii.gz", "--out", str(tmp_path), "--dilate-mm",
                                      "2", "--no-keep-largest"])
    from monai_pipeline.cli.inference import step_overrides

    assert step_overrides(args) == {"steps": {"dilate": {"dilate_mm": 2.0}, "keep_largest": {"enabled": False}}}


def test_an_unknown_step_is_refused_before_any_work(tmp_path):
    blob = torch.load(MODEL, weights_only=True)
    config = dict(blob["config"])
    config["postprocess"] = {**config["postprocess"], "steps": {"dilat": {"dilate_mm": 1.0}}}
    torch.save({**blob, "config": config}, tmp_path / "m.pt")
    rc = main(["infer", "--model", str(tmp_path / "m.pt"), "--input", str(tmp_path / "m.pt"), "--out",
               str(tmp_path / "out"), "--workers", "1"])
    assert rc == 2 and not (tmp_path / "out").exists()
