"""The loss: deep supervision scores every head of a stacked output against the same target with halving weights,
and is what ``build_loss`` gives for DynUNet with ``deep_supervision`` (plain DiceCE otherwise)."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from monai_pipeline.config import load_config
from monai_pipeline.training import StackedDeepSupervisionLoss, build_loss, train
from tests.helpers import TINY_OVERLAY

DS_NET = {"name": "DynUNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                        "kernel_size": [3, 3, 3], "strides": [1, 2, 2],
                                        "upsample_kernel_size": [2, 2], "filters": [8, 16, 32],
                                        "norm_name": "instance", "deep_supervision": True, "deep_supr_num": 1}}


def _stacked(heads: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, heads, 2, 8, 8, 6, generator=gen)
    label = (torch.rand(2, 1, 8, 8, 6, generator=gen) > 0.7).float()
    return logits, label


def test_every_head_counts_with_halving_weights():
    logits, label = _stacked(3)
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    expected = sum(w * base(logits[:, i], label) for i, w in enumerate((1.0, 0.5, 0.25)))
    assert torch.allclose(StackedDeepSupervisionLoss(base)(logits, label), expected)
    # one head and a plain (evaluation-mode) output are the wrapped loss itself
    assert torch.allclose(StackedDeepSupervisionLoss(base)(logits[:, 0], label), base(logits[:, 0], label))


def test_build_loss_follows_the_network():
    plain = load_config(TINY_OVERLAY)
    assert isinstance(build_loss(plain), DiceCELoss) and not plain.network.deep_supervision
    ds = load_config(TINY_OVERLAY, {"network": DS_NET})
    assert ds.network.deep_supervision and isinstance(build_loss(ds), StackedDeepSupervisionLoss)
    off = load_config(TINY_OVERLAY, {"network": {**DS_NET, "kwargs": {**DS_NET["kwargs"], "deep_supervision": False}}})
    assert isinstance(build_loss(off), DiceCELoss)


def test_soft_targets_are_scored_on_every_head():
    logits, label = _stacked(2)
    soft = torch.cat([1.0 - label * 0.6, label * 0.6], dim=1)
    loss = build_loss(load_config(TINY_OVERLAY, {"network": DS_NET, "training": {"label_mode": "soft"}}))
    base = DiceCELoss(softmax=True)
    assert torch.allclose(loss(logits, soft), base(logits[:, 0], soft) + 0.5 * base(logits[:, 1], soft))


@pytest.mark.slow
def test_a_deeply_supervised_dynunet_trains_and_predicts(tiny_dataset, tmp_path):
    """Training with the stacked heads lowers the loss, and the model file predicts a full-size mask (evaluation
    mode gives the main head only)."""
    import csv

    from monai_pipeline.inference import Predictor

    cfg = load_config(TINY_OVERLAY, {"network": DS_NET, "training": {"epochs": 8, "val_interval": 4}})
    model = train(tiny_dataset / "manifest.json", tmp_path / "run", cfg, device="cpu", progress=False)
    with open(tmp_path / "run" / "log.csv") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
    assert sum(losses[-2:]) / 2 < 0.9 * sum(losses[:2]) / 2, losses
    case = next(p for p in (tiny_dataset / "images").glob("*.nii.gz"))
    pred = Predictor(model, device="cpu").predict(case)
    import SimpleITK as sitk
    assert pred.mask.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(case))).shape[::-1]
