"""Dictionary transforms and the configured chains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_pipeline.config import load_config
from monai_pipeline.errors import InputError
from monai_pipeline.transforms import CheckGeometryd, CTNormalized
from monai_pipeline.transforms.dictionary import LesionComponentsd
from monai_pipeline.transforms.pipeline import train_transforms


def test_ct_normalized_wraps_array():
    d = CTNormalized(keys="image", mean=0.0, std=10.0, lower=-50.0, upper=50.0)({"image": np.full((1, 2, 2, 2), 100.0)})
    np.testing.assert_allclose(np.asarray(d["image"]), 5.0)


def test_lesion_components_classes():
    img = np.full((1, 12, 12, 12), -850.0)
    lab = np.zeros((1, 12, 12, 12), np.uint8)
    lab[0, 1:3, 1:3, 1:3] = 1
    lab[0, 6:9, 6:9, 6:9] = 1
    img[lab > 0] = 30.0
    img[0, 10, :, :] = 40.0  # a bright "vessel wall", not a lesion
    out = LesionComponentsd(keys="label", max_components=8)({"image": img, "label": lab})["label_cc"][0]
    assert set(np.unique(out[lab[0] > 0])) == {1, 2}
    assert np.all(out[10][lab[0, 10] == 0] == 0), "bright background is the hard-negative class 0"
    assert out[0, 0, 0] == 9, "dark background is class max_components + 1"


def test_check_geometry_names_the_label():
    a = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.eye(4), meta={"filename_or_obj": "img.nii.gz"})
    b = MetaTensor(torch.zeros(1, 4, 4, 5), affine=torch.eye(4), meta={"filename_or_obj": "lab.nii.gz"})
    with pytest.raises(InputError, match="lab.nii.gz: label shape"):
        CheckGeometryd(keys=["image", "label"])({"image": a, "label": b})
    c = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.diag(torch.tensor([2.0, 1, 1, 1])),
                   meta={"filename_or_obj": "lab2.nii.gz"})
    with pytest.raises(InputError, match="lab2.nii.gz: label geometry"):
        CheckGeometryd(keys=["image", "label"])({"image": a, "label": c})


@pytest.mark.parametrize("sampling", ["posneg", "lesion"])
def test_train_chain_yields_patches(tiny_dataset, sampling):
    from monai_pipeline.data.manifest import load_manifest

    cfg = load_config({"patch": {"size": [32, 32, 16], "num_samples": 3, "sampling": sampling}})
    out = train_transforms(cfg)(load_manifest(tiny_dataset / "manifest.json")[0])
    assert len(out) == 3
    for s in out:
        assert tuple(s["image"].shape) == (1, 32, 32, 16) and s["image"].dtype == torch.float32
        assert float(s["image"].min()) >= -0.5 and float(s["image"].max()) <= 1.5
    assert sum(float(s["label"].sum()) for s in out) > 0
