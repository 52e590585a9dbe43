"""The Python API: ``from monai_pipeline import segment`` gives infer's mask, with str or Path inputs."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from tests.helpers import run_cli


def test_segment_equals_infer_and_writes_with_provenance(tiny_dataset, trained_tiny_model, tmp_path):
    import monai_pipeline
    from monai_pipeline import Predictor, segment

    assert {"segment", "Predictor", "load_config", "read_ct"} <= set(monai_pipeline.__all__)
    entry = json.loads((tiny_dataset / "manifest.json").read_text())["test"][0]
    image = tiny_dataset / entry["image"]
    r = run_cli("infer", "--model", trained_tiny_model, "--input", image, "--out", tmp_path / "cli", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    cli_mask = sitk.ReadImage(str(tmp_path / "cli" / f"{entry['case_id']}.nii.gz"))
    cli = sitk.GetArrayFromImage(cli_mask).transpose(2, 1, 0)
    res = segment(str(image), str(trained_tiny_model), out=str(tmp_path / "api"), device="cpu")  # plain strings
    np.testing.assert_array_equal(res.mask, cli)
    assert res.geometry.size == sitk.ReadImage(str(image)).GetSize()
    assert (tmp_path / "api" / f"{entry['case_id']}_lesions.csv").read_text() == \
        (tmp_path / "cli" / f"{entry['case_id']}_lesions.csv").read_text()
    marker = json.loads((tmp_path / "api" / ".done" / f"{entry['case_id']}.json").read_text())
    assert len(marker["provenance"]["model_sha256"]) == 64
    predictor = Predictor(trained_tiny_model, device="cpu")  # loaded once, reused; Path inputs
    again = segment(image, predictor, case_id="again")
    np.testing.assert_array_equal(again.mask, cli)
    assert again.case_id == "again" and len(again.lesions) == len(res.lesions)
