"""diagnose_misses: one row per reference nodule, its verdict agreeing with the raw decision and the mask."""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def setting(tiny_dataset, trained_tiny_model):
    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.inference import Predictor

    predictor = Predictor(trained_tiny_model, device="cpu", inference={"min_lesion_score": 0.0},
                          postprocess={"steps": {"lung_filter": {"enabled": False}}})
    return predictor, load_manifest(tiny_dataset / "manifest.json", "test")[0]


def _n_nodules(entry) -> int:
    import SimpleITK as sitk
    from scipy import ndimage

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(entry["label"]))) > 0
    return ndimage.label(label, structure=ndimage.generate_binary_structure(3, 3))[1]


@pytest.mark.parametrize("foreground, verdict", [(1.0, "kept"), (0.0, "no voxel > 0.5")])
def test_a_network_that_marks_everything_or_nothing(setting, monkeypatch, foreground, verdict):
    import torch

    mod = load_benchmark("diagnose_misses")
    predictor, entry = setting

    def constant(image):
        fg = torch.full(image.shape[1:], foreground)
        return torch.stack([1 - fg, fg])

    monkeypatch.setattr(predictor, "probabilities", constant)
    rows = mod.nodule_rows(predictor, entry, 0)
    assert len(rows) == _n_nodules(entry) >= 2, "one row per nodule (the tiny phantoms' nodules are all >= 3 mm)"
    for r in rows:
        assert r["verdict"] == verdict and r["max_probability"] == foreground
        assert (r["raw_component_voxels"] > 0) == (foreground > 0.5)


def test_the_trained_model_gets_consistent_verdicts(setting):
    mod = load_benchmark("diagnose_misses")
    predictor, entry = setting
    rows = mod.nodule_rows(predictor, entry, 0)
    assert len(rows) == _n_nodules(entry)
    for r in rows:
        assert r["verdict"] in {"kept", "removed", "no voxel > 0.5"}
        assert 0.0 <= r["max_probability"] <= 1.0 and 0.0 <= r["fraction_above_half"] <= 1.0
        assert (r["verdict"] == "no voxel > 0.5") == (r["raw_component_voxels"] == 0)
