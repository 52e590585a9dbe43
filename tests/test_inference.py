"""Inference lands in the input's own geometry: a non-RAS, anisotropic input, checked in mm with nibabel."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from monai_pipeline.inference import Predictor, shard_cases, write_prediction
from monai_pipeline.io.layout import PredictionLayout
from tests.conftest import physical_points_lps
from tests.helpers import run_cli, tiny_model_file

SPHERES = [((12.0, -30.0, 40.0), 6.0), ((-20.0, -10.0, 60.0), 8.0), ((5.0, 15.0, 52.0), 5.0)]  # (centre mm LPS, r mm)


class Oracle(torch.nn.Module):
    """Two-class logits from the normalised intensity: foreground above -480 HU, halfway between the air
    (-1000) and the spheres (40), so interpolation shrinks or grows nothing (window -1000..400 -> 0..1)."""

    def forward(self, x):
        t = (-480.0 + 1000.0) / 1400.0
        return torch.cat([-(x - t) * 40, (x - t) * 40], dim=1)


def _phantom(path):
    """Air with three soft-tissue spheres; stored with a permuted, flipped direction and 0.7/0.9/2.5 mm."""
    d = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # columns: i -> -y, j -> +z, k -> -x
    spacing = np.array([2.5, 0.7, 0.9])
    size = (40, 110, 100)
    origin = np.array([45.0, 40.0, 0.0])  # i: y 40 -> -57.5, j: z 0 -> 77, k: x 45 -> -45 (mm)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    pts = idx * spacing @ d.T + origin
    hu = np.full(len(pts), -1000.0)
    for c, r in SPHERES:
        hu[np.linalg.norm(pts - np.asarray(c), axis=1) <= r] = 40.0
    img = sitk.GetImageFromArray(hu.reshape(size).transpose(2, 1, 0).astype(np.int16))
    img.SetSpacing(tuple(spacing))
    img.SetOrigin(tuple(origin))
    img.SetDirection(tuple(d.reshape(-1)))
    sitk.WriteImage(img, str(path))
    return img


#: the phantoms are spheres in air, without a body or lungs: the lung filter keeps their candidates
KEEP_WITHOUT_LUNGS = {"steps": {"lung_filter": {"keep_without_lungs": True}}}


def test_mask_overlays_spheres_in_mm(tmp_path):
    img = _phantom(tmp_path / "phantom.nii.gz")
    model = tiny_model_file(tmp_path / "model.pt", {"preprocessing": {"target_spacing": [1.0, 1.0, 1.5]}})
    pred = Predictor(model, device="cpu", postprocess=KEEP_WITHOUT_LUNGS)
    pred.network = Oracle()
    p = pred.predict(pred.load(tmp_path / "phantom.nii.gz"), "phantom")
    write_prediction(p, tmp_path / "out")
    out = tmp_path / "out" / "phantom.nii.gz"
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize() == img.GetSize() and mask.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(mask.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetDirection(), img.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(mask.GetSpacing(), img.GetSpacing(), atol=1e-6)
    pts = physical_points_lps(out)
    truth = sitk.GetArrayFromImage(img).transpose(2, 1, 0) > 0
    truth_pts = physical_points_lps(tmp_path / "phantom.nii.gz", truth.astype(np.uint8))
    assert 2 * np.sum(truth & (p.mask > 0)) / (truth.sum() + (p.mask > 0).sum()) > 0.85
    assert len(p.lesions) == 3
    for c, r in SPHERES:
        near = pts[np.linalg.norm(pts - np.asarray(c), axis=1) <= r + 3]
        ref = truth_pts[np.linalg.norm(truth_pts - np.asarray(c), axis=1) <= r + 3]
        vol = len(near) * float(np.prod(img.GetSpacing()))
        np.testing.assert_allclose(ref.mean(axis=0), c, atol=0.2)  # the phantom itself, via nibabel
        np.testing.assert_allclose(near.mean(axis=0), ref.mean(axis=0), atol=0.8)
        assert abs(vol - 4 / 3 * np.pi * r ** 3) / (4 / 3 * np.pi * r ** 3) < 0.25
        row = min(p.lesions, key=lambda row: np.linalg.norm(
            np.array([row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]]) - c))
        assert abs(row["equivalent_diameter_mm"] - 2 * r) < 1.5
        assert -150 < row["mean_hu"] <= 40  # sphere (40 HU) with a rim of partial air voxels, not air (-1000)
    assert PredictionLayout(tmp_path / "out").is_complete("phantom")


def test_tta_and_probability_map(tmp_path):
    _phantom(tmp_path / "phantom.nii.gz")
    model = tiny_model_file(tmp_path / "model.pt")
    pred = Predictor(model, device="cpu", inference={"tta": True}, postprocess=KEEP_WITHOUT_LUNGS)
    pred.network = Oracle()
    p = pred.predict(pred.load(tmp_path / "phantom.nii.gz"), "phantom", save_prob=True)
    prob = sitk.GetArrayFromImage(p.prob)
    assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1.0 + 1e-5
    assert len(p.lesions) == 3


class SoftOracle(Oracle):
    """The oracle with a gentle slope: probabilities fall from 1 to 0 over a few mm at the spheres' edges."""

    def forward(self, x):
        return super().forward(x) / 8


def test_foreground_threshold_widens_the_mask_to_the_probability_it_names(tmp_path):
    """``inference.foreground_threshold``: the raw mask on the input grid is the resampled foreground
    probability above the threshold (through the Python API), nested as the threshold falls; ``infer
    --foreground-threshold`` gives the same rule from the command line."""
    _phantom(tmp_path / "phantom.nii.gz")
    model = tiny_model_file(tmp_path / "model.pt", {"preprocessing": {"target_spacing": [1.0, 1.0, 1.5]}})
    masks = {}
    for t in (0.2, 0.5, 0.8):
        pred = Predictor(model, device="cpu", inference={"foreground_threshold": t}, postprocess=KEEP_WITHOUT_LUNGS)
        pred.network = SoftOracle()
        p = pred.predict(pred.load(tmp_path / "phantom.nii.gz"), "phantom", save_prob=True, postprocess=False)
        prob = sitk.GetArrayFromImage(p.prob).transpose(2, 1, 0)
        clear = np.abs(prob - t) > 1e-4
        assert ((prob > t) == (p.mask > 0))[clear].all()
        masks[t] = p.mask > 0
    assert masks[0.8].sum() < masks[0.5].sum() < masks[0.2].sum()
    assert not (masks[0.8] & ~masks[0.5]).any() and not (masks[0.5] & ~masks[0.2]).any()

    r = run_cli("infer", "--model", model, "--input", tmp_path / "phantom.nii.gz", "--out", tmp_path / "cli",
                "--device", "cpu", "--no-progress", "--save-prob", "--no-postprocess", "--foreground-threshold", "0.3")
    assert r.returncode == 0, r.stderr
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli" / "phantom.nii.gz"))) > 0
    prob = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli" / "phantom_prob.nii.gz")))
    clear = np.abs(prob - 0.3) > 1e-4
    assert ((prob > 0.3) == mask)[clear].all()
    assert 0 < (prob > 0.3).sum() < prob.size  # the untrained network's probabilities straddle 0.3 somewhere


def test_infer_cli_on_dicom_series_matches_series_geometry(tmp_path):
    from monai_pipeline.data.synthetic import SynthConfig, generate_case
    from monai_pipeline.io import Geometry, read_ct
    from monai_pipeline.io.dicom_writer import write_ct_series

    case = generate_case(2, SynthConfig(matrix=64, extent_z_mm=40.0), orientation="axial_ff")
    write_ct_series(case.image, tmp_path / "series")
    model = tiny_model_file(tmp_path / "model.pt")
    r = run_cli("infer", "--model", model, "--input", tmp_path / "series", "--out", tmp_path / "out", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    mask = sitk.ReadImage(str(tmp_path / "out" / "series.nii.gz"))
    assert Geometry.from_sitk(mask).matches(read_ct(tmp_path / "series").geometry, atol_mm=1e-4)
    assert (tmp_path / "out" / "series_lesions.csv").read_text().startswith("lesion,volume_mm3")


def test_shards_cover_every_case_once():
    cases = [(f"c{i:02d}", f"/x/c{i}.nii.gz") for i in range(11)]
    parts = [shard_cases(cases, (i, 3)) for i in range(3)]
    flat = sorted(c for p in parts for c in p)
    assert flat == sorted(cases)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_bad_single_input_exits_2_without_output(tmp_path):
    model = tiny_model_file(tmp_path / "model.pt")
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x00" * 100)
    r = run_cli("infer", "--model", model, "--input", bad, "--out", tmp_path / "out", "--device", "cpu")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and str(bad) in r.stderr
    assert not (tmp_path / "out").exists()
    r = run_cli("infer", "--model", tmp_path / "nope.pt", "--input", bad, "--out", tmp_path / "out")
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_cli("infer", "--model", model, "--input", bad, "--out", tmp_path / "out", "--overlap", "1.5")
    assert r.returncode == 2 and "overlap must be >= 0 and < 1, got 1.5" in r.stderr


def test_cv_ensemble_runs_at_its_own_threshold(tmp_path):
    """Fold models of one cross-validation differ in the threshold each one's calibration chose: the ensemble
    accepts them and applies ``cv.json``'s ensemble operating point; other differences are refused."""
    import json

    import pytest

    from monai_pipeline.errors import InputError

    cv = tmp_path / "cv"
    for k, score in ((0, 0.91), (1, 0.95)):
        (cv / f"fold_{k}").mkdir(parents=True)
        tiny_model_file(cv / f"fold_{k}" / "model.pt", {"inference": {"min_lesion_score": score}})
    index = {"format": "monai-pipeline-cv/1", "folds": {"0": "fold_0/model.pt", "1": "fold_1/model.pt"}}
    (cv / "cv.json").write_text(json.dumps({**index, "ensemble_operating_point": {"threshold": 0.93}}))
    assert Predictor(cv, device="cpu").cfg.inference.min_lesion_score == 0.93
    assert Predictor(cv, device="cpu", inference={"min_lesion_score": 0.5}).cfg.inference.min_lesion_score == 0.5
    (cv / "cv.json").write_text(json.dumps(index))  # an older cv folder: every candidate kept
    assert Predictor(cv, device="cpu").cfg.inference.min_lesion_score == 0.0
    tiny_model_file(cv / "fold_1" / "model.pt", {"inference": {"overlap": 0.5}})
    with pytest.raises(InputError, match="different configurations"):
        Predictor(cv, device="cpu")


def test_seed_ensemble_folders_expand_to_every_member(tmp_path):
    """A ``cv`` folder may list folders instead of model files: each a seed ensemble's fold (``cv --seeds N
    --ensemble``), whose ``cv.json`` lists its ``members``. Predicting with the top folder averages every member;
    with one fold's folder, only that fold's members, at that folder's own operating point. Members may differ in
    the training seed only; a listed path that is missing is named."""
    import json

    import pytest

    from monai_pipeline.errors import InputError

    seeds = tmp_path / "cv"
    for s in (0, 1):
        for k in (0, 1):
            (seeds / f"seed_{s}" / f"fold_{k}").mkdir(parents=True)
            tiny_model_file(seeds / f"seed_{s}" / f"fold_{k}" / "model.pt",
                            {"training": {"seed": s}, "inference": {"min_lesion_score": 0.1 * (s + k)}})
    ens = seeds / "ensemble"
    for k in (0, 1):
        (ens / f"fold_{k}").mkdir(parents=True)
        (ens / f"fold_{k}" / "cv.json").write_text(json.dumps({
            "members": [f"../../seed_{s}/fold_{k}/model.pt" for s in (0, 1)],
            "ensemble_operating_point": {"threshold": 0.6 + 0.1 * k}}))
    (ens / "cv.json").write_text(json.dumps({"folds": {"0": "fold_0", "1": "fold_1"},
                                             "ensemble_operating_point": {"threshold": 0.5}}))
    top = Predictor(ens, device="cpu")
    assert len(top.networks) == 4 and top.cfg.inference.min_lesion_score == 0.5
    fold1 = Predictor(ens / "fold_1", device="cpu")
    assert len(fold1.networks) == 2 and fold1.cfg.inference.min_lesion_score == pytest.approx(0.7)
    image = torch.rand(1, 40, 40, 28)
    expect = sum(Predictor(seeds / f"seed_{s}" / "fold_1" / "model.pt", device="cpu").probabilities(image)
                 for s in (0, 1)) / 2
    torch.testing.assert_close(fold1.probabilities(image), expect)
    assert fold1.model_sha256 != top.model_sha256
    (ens / "fold_1" / "cv.json").write_text(json.dumps({"members": ["../../seed_2/fold_1/model.pt"]}))
    with pytest.raises(InputError, match="seed_2/fold_1/model.pt, which does not exist"):
        Predictor(ens, device="cpu")
    (ens / "fold_1" / "cv.json").write_text(json.dumps({"members": "not a list"}))
    with pytest.raises(InputError, match="not a valid cv index"):
        Predictor(ens / "fold_1", device="cpu")
    tiny_model_file(seeds / "seed_1" / "fold_0" / "model.pt", {"inference": {"overlap": 0.5}})
    with pytest.raises(InputError, match="different configurations"):
        Predictor(ens / "fold_0", device="cpu")


def test_a_scan_unlike_the_training_scans_slice_spacing_is_named(tmp_path, caplog):
    """The phantom's head-foot axis is its second index axis (0.7 mm apart; the others 2.5 and 0.9 mm): a model
    trained on 1.25-3 mm slices warns once, naming the file; one trained on 0.6-1 mm slices says nothing, and
    neither does an older model file without the range."""
    import logging

    from monai_pipeline.io.geometry import Geometry

    img = _phantom(tmp_path / "phantom.nii.gz")
    assert Geometry.from_sitk(img).slice_spacing_mm == 0.7
    model = tiny_model_file(tmp_path / "model.pt", {"postprocess": KEEP_WITHOUT_LUNGS})
    blob = torch.load(model, weights_only=True)
    for trained, warned in (([1.25, 3.0], True), ([0.6, 1.0], False), (None, False)):
        card = {"n_cases": 4, "sources": {"lidc": 4}}
        torch.save({**blob, "training_data": card if trained is None else {**card, "slice_spacing_mm": trained}},
                   model)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="monai_pipeline.inference.predictor"):
            Predictor(model, device="cpu").predict(tmp_path / "phantom.nii.gz")
        lines = [r.getMessage() for r in caplog.records if "mm apart" in r.getMessage()]
        assert len(lines) == int(warned), lines
        if warned:
            assert "phantom.nii.gz: slices 0.7 mm apart, outside the 1.25-3 mm" in lines[0]
