"""The synthetic chest CT: anatomy in HU, nodules inside the lungs, readable by SimpleITK, nibabel, pydicom."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk

from monai_pipeline.data.synthetic import NODULE_KINDS, SynthConfig, chest_anatomy, generate_case
from monai_pipeline.io import read_ct, sitk_to_xyz_array


def test_case_anatomy_and_labels_inside_lungs():
    cfg = SynthConfig(matrix=128, extent_z_mm=80.0, n_nodules=(3, 4), diameter_mm=(5.0, 20.0))
    case = generate_case(3, cfg, orientation="axial_hf")
    hu = sitk_to_xyz_array(case.image).astype(float)
    lab = sitk_to_xyz_array(case.label) > 0
    lung = case.lung_mask
    assert lab.any() and np.all(lung[lab]), "every nodule voxel lies in a lung"
    corner = hu[:5, :5, :]
    assert abs(np.median(corner) + 1000) < 40, "air outside the body"
    assert -900 < np.median(hu[lung & ~lab]) < -780, "aerated lung about -850 HU"
    assert hu.max() > 500, "bone present"
    sx, sy, sz = case.image.GetSpacing()
    assert 0.6 <= sx == sy <= 0.9 and 1.0 <= sz <= 2.5
    for n in case.nodules:
        assert n.kind in NODULE_KINDS and 5.0 <= n.diameter_mm <= 20.0


def test_nodule_variety_over_cases():
    cfg = SynthConfig(matrix=96, extent_z_mm=60.0, n_nodules=(3, 4), diameter_mm=(6.0, 20.0))
    seen = {"kind": set(), "shape": set(), "site": set()}
    for seed in range(12):
        for n in generate_case(seed, cfg).nodules:
            seen["kind"].add(n.kind)
            seen["shape"].add(n.shape)
            seen["site"].add(n.site)
    assert seen["kind"] == {"solid", "part-solid", "ground-glass"}
    assert seen["shape"] == {"spherical", "lobulated", "spiculated"}
    assert seen["site"] == {"interior", "juxtapleural", "juxtavascular"}


def _anatomy(seed: int, **kw):
    return chest_anatomy((64, 64, 24), (4.0, 4.0, 8.0), np.random.default_rng(seed), height_mm=190.0, **kw)


def test_chest_anatomy_shifts_its_lungs_onto_points_drawn_outside_them():
    img0, lung0, shift0 = _anatomy(5)
    assert shift0 == (0.0, 0.0)
    centre = (np.asarray(lung0.shape) - 1) / 2.0
    # a 3 x 3 voxel block just posterior of the left lung's back edge (y grows posterior), mid-height
    k = lung0.shape[2] // 2
    xs = np.nonzero(lung0[:, :, k].any(axis=1))[0]
    x = int(xs[len(xs) // 4])
    y = int(np.nonzero(lung0[x, :, k])[0].max()) + 3
    block = np.array([[x + i, y + j, k] for i in (-1, 0, 1) for j in (-1, 0, 1)])
    assert not lung0[tuple(block.T)].any()
    cover = [(block - centre) * np.array([4.0, 4.0, 8.0])]
    img, lung, shift = _anatomy(5, cover_mm=cover)
    assert lung[tuple(block.T)].all(), "the shifted lungs hold the block"
    assert shift != (0.0, 0.0) and max(abs(s) for s in shift) <= 30.0
    # the shift is a translation of the same phantom, nothing else: equal to asking for that offset directly
    img_t, lung_t, _ = _anatomy(5, offset_mm=(shift[0], shift[1], 0.0))
    np.testing.assert_array_equal(img, img_t)
    np.testing.assert_array_equal(lung, lung_t)
    # points already inside need no shift
    inside = np.argwhere(lung0)[:20]
    assert _anatomy(5, cover_mm=[(inside - centre) * np.array([4.0, 4.0, 8.0])])[2] == (0.0, 0.0)


def test_deterministic_for_a_seed():
    cfg = SynthConfig(matrix=64, extent_z_mm=40.0)
    a, b = generate_case(4, cfg), generate_case(4, cfg)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(b.image))


def test_synth_cli_both_formats(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "monai_pipeline.cli", "synth", "--out", str(out), "--cases", "3",
                        "--format", "both", "--matrix", "96", "--extent-mm", "50", "--pngs", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    entries = manifest["training"] + manifest["validation"] + manifest["test"]
    assert len(entries) == 3
    from monai.data import load_decathlon_datalist

    assert len(load_decathlon_datalist(str(out / "manifest.json"), data_list_key="test")) == 1
    for e in entries:
        img_path, lab_path, dcm = out / e["image"], out / e["label"], out / e["dicom"]
        nb_img, nb_lab = nib.load(str(img_path)), nib.load(str(lab_path))
        assert nb_img.get_data_dtype() == np.int16 and nb_lab.get_data_dtype() == np.uint8
        np.testing.assert_allclose(nb_img.affine, nb_lab.affine)
        files = sorted(dcm.iterdir())
        ds = pydicom.dcmread(str(files[0]))
        assert ds.Modality == "CT" and float(ds.RescaleIntercept) == -1024
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert len({pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in files}) == len(files)
        vol = read_ct(dcm)
        np.testing.assert_array_equal(sitk_to_xyz_array(vol.image), np.asarray(nb_img.dataobj))
        ras = vol.geometry.ras_affine()
        np.testing.assert_allclose(ras, nb_img.affine, atol=1e-3)
        assert np.asarray(nb_lab.dataobj).any()
    assert (out / "png").is_dir() and list((out / "png").glob("*.png"))
