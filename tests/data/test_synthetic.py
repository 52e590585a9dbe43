"""The synthetic chest CT: anatomy in HU, nodules inside the lungs, readable by SimpleITK, nibabel, pydicom."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk

from monai_pipeline.data.synthetic import NODULE_KINDS, SynthConfig, generate_case
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
