"""``lidc-demo --quick`` end to end (real XML reads -> studies -> lidc-convert --per-reader -> 2-fold CV per label
mode -> reader agreement), and the label modes' targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import SHARED


def test_reader_agreement_targets() -> None:
    from monai.losses import DiceCELoss

    from monai_pipeline.training import ReaderAgreementBatch

    counts = torch.tensor([0, 1, 2, 4], dtype=torch.uint8).view(1, 1, 4, 1, 1).repeat(2, 1, 1, 1, 1)
    batch = {"image": torch.zeros(2, 1, 4, 1, 1), "label": counts, "n_readers": torch.tensor([4, 2])}
    _, soft = ReaderAgreementBatch("soft")(batch)
    assert soft.shape == (2, 2, 4, 1, 1)
    np.testing.assert_allclose(soft[0, 1].flatten().numpy(), [0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(soft[1, 1].flatten().numpy(), [0.0, 0.5, 1.0, 1.0])  # 4 of 2 readers: clipped
    np.testing.assert_allclose((soft[:, 0] + soft[:, 1]).numpy(), 1.0)
    _, anyr = ReaderAgreementBatch("any-reader")(batch)
    assert anyr.shape == (2, 1, 4, 1, 1) and anyr[0].flatten().tolist() == [0, 1, 1, 1]
    # the soft loss prefers a prediction matching the readers' fractions over a hard consensus-like one
    loss = DiceCELoss(softmax=True)
    p = soft[:1].clamp(1e-4, 1 - 1e-4)
    matching = torch.log(p)
    hard = torch.log(torch.where(p > 0.5, 1 - 1e-4, 1e-4))
    hard = torch.cat([torch.log(1 - hard.exp()[:, 1:]), hard[:, 1:]], dim=1)
    assert float(loss(matching, soft[:1])) < float(loss(hard, soft[:1]))
    with pytest.raises(ValueError):
        ReaderAgreementBatch("consensus")


def test_label_mode_needs_per_reader_labels(tmp_path) -> None:
    from monai_pipeline.errors import InputError
    from monai_pipeline.training import training_labels

    files = [{"image": "a.nii.gz", "label": "l.nii.gz", "case_id": "a"}]
    assert training_labels(files, "consensus", tmp_path / "m.json") is files
    with pytest.raises(InputError, match="lidc-convert --per-reader"):
        training_labels(files, "soft", tmp_path / "m.json")
    out = training_labels([{**files[0], "label_readers": "r.nii.gz", "n_readers": 4}], "any-reader", tmp_path)
    assert out[0]["label"] == "r.nii.gz"


@pytest.mark.skipif(not (SHARED / "lidc" / "tcia-lidc-xml.tar.xz").is_file(), reason="../shared/lidc not present")
def test_lidc_demo_quick(tmp_path, capsys) -> None:
    from monai_pipeline.cli import main

    assert main(["lidc-demo", "--out", str(tmp_path / "d"), "--quick"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = lines[-1]
    assert last.startswith("lidc-demo: ") and "consensus " in last and "soft " in last and "any-reader " in last
    assert "mean reader-vs-reader Dice" in last
    result = json.loads((tmp_path / "d" / "lidc_demo.json").read_text())
    assert [r["label_mode"] for r in result["modes"]] == ["consensus", "soft", "any-reader"]
    assert (tmp_path / "d" / "lidc_demo.png").stat().st_size > 1000
    manifest = json.loads((tmp_path / "d" / "converted" / "manifest.json").read_text())["training"]
    assert len(manifest) == 4 and all(e["source"] == "lidc-synthetic" and e["label_readers"] for e in manifest)
    for r in result["modes"]:
        summary = json.loads((tmp_path / "d" / f"cv_{r['label_mode']}" / "summary.json").read_text())
        assert summary["n_cases"] == 4 and r["dice_mean"] == summary["metrics"]["dice"]["mean"]
        assert summary["reader_agreement"]["n_nodules"] > 0
        cfg = (tmp_path / "d" / f"cv_{r['label_mode']}" / "fold_0" / "config.yaml").read_text()
        assert f"label_mode: {r['label_mode']}" in cfg
    rr = result["modes"][0]["reader_vs_reader"]
    assert 0.0 < rr < 1.0 and all(r["reader_vs_reader"] == rr for r in result["modes"])
