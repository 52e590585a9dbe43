"""Real scanner files in the loop (``../shared/realct``: a Siemens DICOM series without file extensions, real CT
volumes with TotalSegmentator's organs): the lung region against TotalSegmentator's lungs, stomach and bowel; the
reader against an independent converter (dcm2niix); the mask of a real series in its exact geometry; the warning a
synthetic-only model gives on a real scan."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.conftest import SHARED
from tests.helpers import run_cli, tiny_model_file

REAL = SHARED / "realct"
SERIES = REAL / "ct_dicom_abdomen"
#: scans with a TotalSegmentator segmentation in their own geometry
WITH_SEGMENTATION = [("ct_thorax_abdomen_3mm_30slices.nii.gz", "ct_thorax_abdomen_3mm_30slices_totalseg.nii.gz"),
                     ("ct_dicom_abdomen", "ct_dicom_abdomen_totalseg.nii.gz")]
LUNG_LABELS = (10, 11, 12, 13, 14)
GUT_LABELS = (6, 18, 19, 20)  # stomach, small bowel, duodenum, colon
#: "none of the stomach and bowel voxels", with a tolerance of 0.1 % of them (boundary voxels of a 3 mm grid)
GUT_TOLERANCE = 0.001

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not REAL.is_dir(), reason="../shared/realct not present")]


def _dcm2niix() -> str | None:
    exe = shutil.which("dcm2niix") or str(Path(__import__("sys").executable).with_name("dcm2niix"))
    return exe if Path(exe).exists() else None


def sitk_xyz(image: sitk.Image) -> np.ndarray:
    from monai_pipeline.io import sitk_to_xyz_array

    return sitk_to_xyz_array(image)


def _volume_and_organs(image: str, segmentation: str):
    """The scan and TotalSegmentator's labels on the scan's own grid (x, y, z). The DICOM series' segmentation is
    stored with its rows flipped (same voxels, another index order): nearest-neighbour resampling onto the series'
    grid only reorders it."""
    from monai_pipeline.io import read_ct, read_label, sitk_to_xyz_array

    vol = read_ct(REAL / image)
    seg = read_label(REAL / segmentation).image
    on_grid = sitk.Resample(seg, vol.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, seg.GetPixelID())
    assert sitk.GetArrayViewFromImage(on_grid).sum() == sitk.GetArrayViewFromImage(seg).sum()  # nothing lost
    return vol, sitk_to_xyz_array(on_grid)


@pytest.mark.parametrize("image,segmentation", WITH_SEGMENTATION)
def test_lung_filter_region_holds_the_lungs_and_no_gut(image, segmentation):
    """On the input grid, as the lung filter computes it: >= 0.98 of TotalSegmentator's lung voxels inside, and
    stomach and bowel outside (a scan without lungs gives no region: the filter then keeps every candidate)."""
    from monai_pipeline.config import load_config
    from monai_pipeline.io import Geometry, sitk_to_xyz_array
    from monai_pipeline.io.geometry import axial_axis
    from monai_pipeline.lungs import lung_region
    from monai_pipeline.postprocess.steps import LUNG_FILTER_RESOLUTION_MM

    vol, organs = _volume_and_organs(image, segmentation)
    post = load_config().postprocess
    g = Geometry.from_sitk(vol.image)
    region = lung_region(sitk_to_xyz_array(vol.image), g.spacing, -500.0, post.steps["lung_filter"]["lung_closing_mm"],
                         resolution_mm=LUNG_FILTER_RESOLUTION_MM, axis=axial_axis(g.direction))
    lungs, gut = np.isin(organs, LUNG_LABELS), np.isin(organs, GUT_LABELS)
    assert gut.sum() > 1000  # both scans show stomach or bowel
    if lungs.any():
        assert (region & lungs).sum() >= 0.98 * lungs.sum(), (region & lungs).sum() / lungs.sum()
    else:
        assert not region.any(), "an abdominal scan without lungs must not produce a lung region"
    assert (region & gut).sum() <= GUT_TOLERANCE * gut.sum(), (region & gut).sum()


@pytest.mark.parametrize("image,segmentation", WITH_SEGMENTATION)
def test_lung_crop_keeps_every_lung_voxel(image, segmentation):
    """The network's crop (the model's preprocessing: RAS, lung crop with its margin) applied to TotalSegmentator's
    labels alongside the image keeps every lung voxel."""
    from monai.data import MetaTensor
    from monai.transforms import Compose

    from monai_pipeline.config import load_config
    from monai_pipeline.io.reader import volume_meta
    from monai_pipeline.transforms.pipeline import spatial_transforms

    cfg = load_config()
    vol, organs = _volume_and_organs(image, segmentation)
    meta = volume_meta(vol)
    data = {"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(sitk_xyz(vol.image)))[None], meta=meta),
            "label": MetaTensor(torch.from_numpy(np.ascontiguousarray(organs))[None], meta=dict(meta))}
    out = Compose([t for t in spatial_transforms(cfg, ("image", "label"))
                   if t.__class__.__name__ != "ResampleToSpacingd"])(data)
    kept = np.isin(np.asarray(out["label"][0]), LUNG_LABELS).sum()
    assert kept == np.isin(organs, LUNG_LABELS).sum()
    if not np.isin(organs, LUNG_LABELS).any():  # no lungs: the crop falls back to the body, not to gas
        assert np.prod(out["image"].shape[1:]) > 0.3 * np.prod(organs.shape)


def test_lung_crop_on_the_gut_scan_is_the_lungs_not_the_abdomen():
    """The 30-slice scan's crop spans the lung bases (and the margin), not the abdomen with its bowel gas: before
    the gas was told apart it was 310 x 265 x 59 voxels at 1 x 1 x 1.5 mm, the whole body."""
    from monai_pipeline.config import load_config
    from monai_pipeline.transforms.pipeline import prediction_transforms

    cfg = load_config()
    data = prediction_transforms(cfg)({"image": str(REAL / WITH_SEGMENTATION[0][0])})
    _, organs = _volume_and_organs(*WITH_SEGMENTATION[0])
    slices = np.flatnonzero(np.isin(organs, LUNG_LABELS).any(axis=(0, 1)))
    lung_mm = (slices[-1] - slices[0] + 1) * 3.0  # 3 mm slices
    crop_mm = data["image"].shape[3] * cfg.preprocessing.target_spacing[2]
    assert crop_mm <= lung_mm + 2 * cfg.preprocessing.crop_margin_mm + 9.0, (crop_mm, lung_mm)
    assert data["image"].shape[2] < 0.8 * 265, data["image"].shape  # front to back: not the whole trunk


def test_lung_region_on_synthetic_phantoms():
    """The phantoms' own lung masks (exact, from the generator) are covered as well, in every orientation."""
    from monai_pipeline.data.synthetic import ORIENTATIONS, SynthConfig, generate_case
    from monai_pipeline.io import Geometry, sitk_to_xyz_array
    from monai_pipeline.io.geometry import axial_axis
    from monai_pipeline.lungs import lung_region
    from monai_pipeline.postprocess.steps import LUNG_FILTER_RESOLUTION_MM

    cfg = SynthConfig(matrix=160, extent_z_mm=100.0)
    for i, orientation in enumerate(ORIENTATIONS):
        case = generate_case(40 + i, cfg, orientation=orientation)
        g = Geometry.from_sitk(case.image)
        region = lung_region(sitk_to_xyz_array(case.image), g.spacing, -500.0, 10.0,
                             resolution_mm=LUNG_FILTER_RESOLUTION_MM, axis=axial_axis(g.direction))
        lungs = np.asarray(case.lung_mask) > 0
        assert (region & lungs).sum() >= 0.98 * lungs.sum(), (orientation, (region & lungs).sum() / lungs.sum())


def _dcm2niix_volume(series: Path, out: Path):
    import nibabel as nib

    exe = _dcm2niix()
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([exe, "-z", "y", "-b", "n", "-f", "vol", "-o", str(out), str(series)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(out.glob("*.nii.gz"))
    assert len(files) == 1, files
    return nib.load(str(files[0]))


def assert_same_voxels_in_space(image: sitk.Image, other) -> None:
    """``image`` (ours) and ``other`` (a nibabel image) hold the same voxel values at the same physical places:
    their index grids differ by a signed axis permutation at most, found from the affines (RAS, mm)."""
    from monai_pipeline.io import Geometry, sitk_to_xyz_array

    ours = Geometry.from_sitk(image).ras_affine()
    t = np.linalg.inv(other.affine) @ ours  # our voxel index -> theirs
    perm, order = _grid_permutation(t, image.GetSize(), other.shape)
    moved = np.transpose(sitk_to_xyz_array(image), order)
    for b in range(3):
        if perm[b, order[b]] < 0:
            moved = np.flip(moved, axis=b)
    theirs = np.asanyarray(other.dataobj)
    np.testing.assert_array_equal(moved, theirs.astype(moved.dtype))


def _grid_permutation(t: np.ndarray, size, their_shape):
    """Check that index map ``t`` (4x4, ours -> theirs) is a signed axis permutation taking our grid of ``size``
    exactly onto theirs (voxel 0 on the corner the flips say); returns (permutation, their axis -> our axis)."""
    perm = np.rint(t[:3, :3])
    np.testing.assert_allclose(t[:3, :3], perm, atol=1e-3)
    assert sorted(np.abs(perm).sum(0)) == [1, 1, 1] and sorted(np.abs(perm).sum(1)) == [1, 1, 1], perm
    order = [int(np.argmax(np.abs(perm[b]))) for b in range(3)]  # their axis b is our axis order[b]
    assert tuple(int(size[order[b]]) for b in range(3)) == tuple(their_shape[:3])
    expected = np.array([(their_shape[b] - 1) if perm[b, order[b]] < 0 else 0 for b in range(3)], float)
    np.testing.assert_allclose(t[:3, 3], expected, atol=1e-3)
    return perm, order


@pytest.mark.skipif(_dcm2niix() is None, reason="dcm2niix not installed (pip install dcm2niix)")
def test_real_series_equals_dcm2niix(tmp_path):
    import nibabel as nib

    from monai_pipeline.io import read_ct

    vol = read_ct(SERIES)
    assert vol.image.GetSize() == (512, 512, 20) and not vol.synthetic
    reference = _dcm2niix_volume(SERIES, tmp_path / "d2n")
    assert_same_voxels_in_space(vol.image, reference)
    # `monai-pipeline convert` writes what the reader read: read back with nibabel, the same voxels in space
    r = run_cli("convert", "--input", SERIES, "--out", tmp_path / "converted.nii.gz")
    assert r.returncode == 0, r.stderr
    converted = nib.load(str(tmp_path / "converted.nii.gz"))
    _grid_permutation(np.linalg.inv(reference.affine) @ converted.affine, converted.shape, reference.shape)
    assert np.array_equal(np.sort(np.asanyarray(converted.dataobj).ravel()),
                          np.sort(np.asanyarray(reference.dataobj).ravel()))


@pytest.mark.skipif(_dcm2niix() is None, reason="dcm2niix not installed (pip install dcm2niix)")
def test_synthetic_series_in_every_orientation_equal_dcm2niix(tmp_path):
    from monai_pipeline.data.synthetic import ORIENTATIONS, SynthConfig, generate_case
    from monai_pipeline.io import read_ct
    from monai_pipeline.io.dicom_writer import write_ct_series

    cfg = SynthConfig(matrix=64, extent_z_mm=30.0)
    for i, orientation in enumerate(o for o in ORIENTATIONS if o != "left_handed"):  # DICOM grids are right-handed
        series = tmp_path / orientation
        write_ct_series(generate_case(60 + i, cfg, orientation=orientation).image, series)
        vol = read_ct(series)
        assert vol.synthetic
        assert_same_voxels_in_space(vol.image, _dcm2niix_volume(series, tmp_path / f"{orientation}_d2n"))


@pytest.mark.skipif(_dcm2niix() is None, reason="dcm2niix not installed (pip install dcm2niix)")
def test_real_series_predicted_in_its_exact_geometry_and_warned(tmp_path):
    """`infer` on the Siemens series (files without extension): the mask lies on dcm2niix's grid of the series;
    a model trained only on phantoms warns once that this is a real scan."""
    import json

    import nibabel as nib

    from monai_pipeline.model_file import load_model_file, save_model_file

    model = tiny_model_file(tmp_path / "model.pt")
    net, blob = load_model_file(model)
    from monai_pipeline.config import config_from_model_dict

    synthetic_only = save_model_file(tmp_path / "synthetic_only.pt", net, config_from_model_dict(blob["config"]),
                                     {"training_data": {"n_cases": 30, "sources": {"synthetic": 30}}})
    r = run_cli("infer", "--model", synthetic_only, "--input", SERIES, "--out", tmp_path / "out", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "never seen real anatomy" in line]
    assert len(warnings) == 1 and "30 synthetic" in warnings[0], r.stderr
    mask = nib.load(str(tmp_path / "out" / "ct_dicom_abdomen.nii.gz"))
    reference = _dcm2niix_volume(SERIES, tmp_path / "d2n")
    # dcm2niix stores the rows in the other order: the same grid up to a flip, voxel for voxel
    _grid_permutation(np.linalg.inv(reference.affine) @ mask.affine, mask.shape, reference.shape)
    done = json.loads((tmp_path / "out" / ".done" / "ct_dicom_abdomen.json").read_text())
    assert done["geometry"]["size"] == [512, 512, 20]


def test_no_warning_for_phantoms_or_models_with_real_data(tmp_path):
    from monai_pipeline.config import config_from_model_dict
    from monai_pipeline.data.synth_dataset import synthesize
    from monai_pipeline.model_file import load_model_file, save_model_file

    model = tiny_model_file(tmp_path / "model.pt")
    net, blob = load_model_file(model)
    cfg = config_from_model_dict(blob["config"])
    synthetic_only = save_model_file(tmp_path / "s.pt", net, cfg, {"training_data": {"n_cases": 3, "sources":
                                                                                   {"synthetic": 3}}})
    mixed = save_model_file(tmp_path / "m.pt", net, cfg, {"training_data": {"n_cases": 3, "sources":
                                                                         {"real-background": 1, "synthetic": 2}}})
    from monai_pipeline.data.synthetic import SynthConfig

    manifest = synthesize(tmp_path / "data", 1, seed=3, cfg=SynthConfig(matrix=64, extent_z_mm=30.0), n_test=1,
                          n_val=0, progress=False)
    phantom = manifest.parent / "images" / "synth_003_000.nii.gz"
    for m, image, warned in ((synthetic_only, phantom, False), (mixed, REAL / WITH_SEGMENTATION[0][0], False),
                             (synthetic_only, REAL / WITH_SEGMENTATION[0][0], True)):
        r = run_cli("infer", "--model", m, "--input", image, "--out", tmp_path / f"out_{m.stem}_{warned}",
                    "--device", "cpu")
        assert r.returncode == 0, r.stderr
        assert ("never seen real anatomy" in r.stderr) == warned, (m, image, r.stderr)


def test_synth_background_inserts_labelled_nodules_into_real_lungs(tmp_path):
    """`synth --background`: nodules in the real CT's lungs; outside them the image is the real scan, voxel for
    voxel; every label voxel lies in the lungs and was changed towards the nodule's HU; the manifest says where
    the cases come from."""
    import json

    from monai_pipeline.io import read_ct, sitk_to_xyz_array
    from monai_pipeline.io.geometry import axial_axis
    from monai_pipeline.lungs import lung_region

    background = REAL / "ct_thorax_abdomen_3mm.nii.gz"
    r = run_cli("synth", "--background", background, "--out", tmp_path / "bg", "--cases", "2", "--seed", "4",
                "--min-diameter-mm", "5", "--pngs", "0")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "bg" / "manifest.json").read_text())
    entries = manifest["training"]
    assert len(entries) == 2 and {e["source"] for e in entries} == {"real-background"}
    real = read_ct(background)
    real_hu = sitk_to_xyz_array(real.image)
    g = real.geometry
    region = lung_region(real_hu, g.spacing, -500.0, 10.0, resolution_mm=0.0, axis=axial_axis(g.direction))
    for e in entries:
        img = read_ct(tmp_path / "bg" / e["image"])
        assert img.geometry.matches(g) and not img.synthetic
        hu = sitk_to_xyz_array(img.image)
        label = sitk_to_xyz_array(sitk.ReadImage(str(tmp_path / "bg" / e["label"]))) > 0
        truth = json.loads((tmp_path / "bg" / "truth" / f"{e['case_id']}.json").read_text())
        assert truth["nodules"] and label.sum() > 0
        assert not (label & ~region).any()  # labels only inside the lungs
        changed = hu != real_hu
        assert not (changed & ~region).any()  # the rest of the scan untouched
        # nodule voxels brighter than the lung they replace (but for vessels a nodule touches)
        assert (hu[label] > real_hu[label] + 100).mean() > 0.8


def test_synth_background_without_lungs_exits_2_before_writing(tmp_path):
    r = run_cli("synth", "--background", SERIES, "--out", tmp_path / "bg", "--cases", "2")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ct_dicom_abdomen" in lines[0] and "no lungs" in lines[0], r.stderr
    assert not (tmp_path / "bg" / "manifest.json").exists() and not list((tmp_path / "bg").rglob("*.nii.gz"))
