"""bench_lidc_epochs reads a cross-validation's figures and each fold's validation Dice from its files."""

from __future__ import annotations

import json

from tests.helpers import load_benchmark


def _bench():
    return load_benchmark("bench_lidc_epochs")


def test_validation_rows_and_figures(tmp_path):
    mod = _bench()
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "log.csv").write_text("epoch,train_loss,lr,val_mean_dice,seconds\n1,0.9,0.003,,2.0\n"
                                                 "2,0.8,0.002,0.1234,2.0\n3,0.7,0.001,,2.0\n4,0.6,0.0,0.25,2.0\n")
    assert mod.validations(tmp_path) == {"fold_0": [(2, 0.123), (4, 0.25)]}
    summary = {"metrics": {"dice": {"mean": 0.2}}, "reader_agreement": {"model_vs_consensus": {"mean": 0.3}},
               "lesion_sensitivity_pooled": 0.4, "lesion_false_positives_per_scan": 1.5, "detection": {"cpm": 0.25}}
    assert mod.figures(summary) == {"case_dice": 0.2, "nodule_dice_vs_consensus": 0.3, "sensitivity": 0.4,
                                    "fp_per_scan": 1.5, "cpm": 0.25}


def test_split_by_placement(tmp_path):
    mod = _bench()
    synth = tmp_path / "synth_lidc.json"
    synth.write_text(json.dumps({"records": [{"patient_id": "A", "lung_pockets": 0},
                                             {"patient_id": "B", "lung_pockets": 1}]}))
    (tmp_path / "reference_lesions.csv").write_text("case_id,lesion,detected,lesion_dice\nA,1,True,0.8\nA,2,False,0\n"
                                                    "B_s1,1,False,0\n")
    (tmp_path / "metrics.csv").write_text("case_id,dice,lesion_fp\nA,0.6,1\nB_s1,0.0,3\n")
    split = mod.by_placement(tmp_path, synth)
    assert split["in the phantom's lungs"] == {"studies": 1, "nodules": 2, "detected": 1, "nodule_dice": 0.4,
                                               "case_dice": 0.6, "fp_per_scan": 1.0}
    assert split["with a lung pocket"] == {"studies": 1, "nodules": 1, "detected": 0, "nodule_dice": 0.0,
                                           "case_dice": 0.0, "fp_per_scan": 3.0}


def test_every_candidate_pools_the_stored_detections(tmp_path):
    import torch

    mod = _bench()
    dets = {0: [{"case_id": "a", "nodule_scores": [0.9, None], "fp_scores": [0.95, 0.2], "ignored": 0}],
            1: [{"case_id": "b", "nodule_scores": [0.6], "fp_scores": [], "ignored": 0}]}
    for k, d in dets.items():
        (tmp_path / f"fold_{k}").mkdir()
        torch.save({"operating_point": {"detections": d}}, tmp_path / f"fold_{k}" / "model.pt")
    got = mod.every_candidate(tmp_path)
    assert got["max_sensitivity"] == round(2 / 3, 3) and got["fp_per_scan_all"] == 1.0
    torch.save({"operating_point": {"threshold": 0.5}}, tmp_path / "fold_1" / "model.pt")
    assert mod.every_candidate(tmp_path) is None, "older model files stored no detections"
