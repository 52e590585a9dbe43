"""``monai-pipeline synth``: a folder of synthetic chest CT cases with labels, ground truth and a manifest."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from monai_pipeline.data.background import analyse_background, insert_nodules
from monai_pipeline.data.manifest import relpath, write_manifest
from monai_pipeline.data.synthetic import SynthCase, SynthConfig, generate_case, nodules_to_json, reorient_exact
from monai_pipeline.io.dicom_writer import write_ct_series
from monai_pipeline.io.geometry import Geometry, sitk_to_xyz_array, xyz_array_to_sitk
from monai_pipeline.io.reader import read_ct
from monai_pipeline.io.writer import SYNTHETIC_MARK, atomic_write_text, write_image
from monai_pipeline.visualize import save_slices_png

logger = logging.getLogger(__name__)
FORMATS = ("nifti", "dicom", "both")


def _dicom_safe(case: SynthCase) -> SynthCase:
    """DICOM needs a right-handed grid: flip the slice axis of a left-handed case (same physical content)."""

    g = Geometry.from_sitk(case.image)
    d = g.direction_matrix
    if np.allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2], atol=1e-6):
        return case
    nd = d.copy()
    nd[:, 2] *= -1
    img, ng = reorient_exact(sitk_to_xyz_array(case.image), g, nd)
    lab, _ = reorient_exact(sitk_to_xyz_array(case.label), g, nd)
    return SynthCase(case.case_id, xyz_array_to_sitk(img, ng), xyz_array_to_sitk(lab, ng), case.nodules,
                     case.orientation)


def synthesize(out: str | Path, n_cases: int, seed: int = 0, fmt: str = "nifti", cfg: SynthConfig | None = None,
               n_test: int | None = None, n_val: int | None = None, n_folds: int = 5, progress: bool = True,
               pngs: int = 0) -> Path:
    """Write ``n_cases`` cases under ``out`` and ``out/manifest.json``; returns the manifest path.

    Layout: ``images/<case>.nii.gz`` (int16 HU), ``labels/<case>.nii.gz`` (uint8, same grid),
    ``dicom/<case>/`` (CT series, with ``--format dicom|both``), ``truth/<case>.json`` (nodule centres in mm,
    LPS), ``png/<case>.png`` for the first ``pngs`` cases. Each case is its own synthetic patient.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if n_cases < 1:
        raise ValueError(f"cases must be >= 1, got {n_cases}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    cfg = cfg or SynthConfig()
    entries = []
    for i in tqdm(range(n_cases), desc="synth", disable=not progress, unit="case"):
        cid = f"synth_{seed:03d}_{i:03d}"
        case = generate_case(seed * 100003 + i, cfg, case_id=cid)
        if fmt != "nifti":
            case = _dicom_safe(case)
        label_path = write_image(case.label, out / "labels" / f"{cid}.nii.gz")
        entry: dict = {"case_id": cid, "patient_id": cid, "label": relpath(label_path, manifest_path),
                       "orientation": case.orientation}
        entry["source"] = "synthetic"
        if fmt in ("nifti", "both"):
            case.image.SetMetaData("ITK_FileNotes", f"{SYNTHETIC_MARK} phantom {cid}")  # NIfTI descrip
            entry["image"] = relpath(write_image(case.image, out / "images" / f"{cid}.nii.gz"), manifest_path)
        if fmt in ("dicom", "both"):
            folder = out / "dicom" / cid
            rng = np.random.default_rng(seed * 7919 + i)
            write_ct_series(case.image, folder, patient_id=f"SYNTH-{seed:03d}-{i:03d}", rng=rng)
            key = "image" if fmt == "dicom" else "dicom"
            entry[key] = relpath(folder, manifest_path)
        atomic_write_text(out / "truth" / f"{cid}.json", json.dumps(
            {"case_id": cid, "orientation": case.orientation, "geometry": Geometry.from_sitk(case.image).to_dict(),
             "nodules": nodules_to_json(case.nodules)}, indent=1))
        if i < pngs:

            save_slices_png(case.image, out / "png" / f"{cid}.png", label=case.label)
        entries.append(entry)
    n_test = n_test if n_test is not None else (max(1, round(0.2 * n_cases)) if n_cases >= 3 else 0)
    n_val = n_val if n_val is not None else (max(1, round(0.15 * n_cases)) if n_cases >= 3 else 0)
    test, val, train = entries[:n_test], entries[n_test:n_test + n_val], entries[n_test + n_val:]
    folds = min(n_folds, max(1, len(train)))
    train = [{**e, "fold": i % folds} for i, e in enumerate(train)]
    write_manifest(manifest_path, {"training": train, "validation": val, "test": test},
                   extra={"description": f"synthetic chest CT, seed {seed}, {n_cases} cases",
                          "labels": {"0": "background", "1": "nodule"}})
    logger.info("wrote %d cases to %s", n_cases, out)
    return manifest_path


def synthesize_background(out: str | Path, backgrounds: list[str | Path], n_cases: int, seed: int = 0,
                          diameter_mm: tuple[float, float] = (3.0, 30.0), n_test: int = 0, n_val: int = 0,
                          n_folds: int = 5, progress: bool = True, pngs: int = 0) -> Path:
    """``synth --background CT...``: ``n_cases`` cases of synthetic nodules in the lungs of the real CTs
    ``backgrounds`` (cycled; :func:`~monai_pipeline.data.background.insert_nodules`), laid out as
    :func:`synthesize` lays out phantoms; manifest entries have ``source: real-background`` and name their
    background. Every background is read (and checked for lungs) before any case is written."""

    if n_cases < 1:
        raise ValueError(f"cases must be >= 1, got {n_cases}")
    # each background read and analysed once; one nodule placed in each before anything is written, so a
    # background without lungs (or with lungs too small) fails first
    volumes = [analyse_background(read_ct(b).image, str(b)) for b in backgrounds]
    for vol in volumes:
        insert_nodules(vol, seed, (1, 1), diameter_mm)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    entries = []
    for i in tqdm(range(n_cases), desc="synth --background", disable=not progress, unit="case"):
        vol = volumes[i % len(volumes)]
        cid = f"realbg_{seed:03d}_{i:03d}"
        case = insert_nodules(vol, seed * 100003 + i, diameter_mm=diameter_mm)
        case.image.SetMetaData("ITK_FileNotes", f"real CT + synthetic nodules {cid}")  # NIfTI descrip
        label_path = write_image(case.label, out / "labels" / f"{cid}.nii.gz")
        image_path = write_image(case.image, out / "images" / f"{cid}.nii.gz")
        atomic_write_text(out / "truth" / f"{cid}.json", json.dumps(
            {"case_id": cid, "background": Path(vol.source).name, "geometry": Geometry.from_sitk(case.image).to_dict(),
             "nodules": nodules_to_json(case.nodules)}, indent=1))
        if i < pngs:

            save_slices_png(case.image, out / "png" / f"{cid}.png", label=case.label)
        entries.append({"case_id": cid, "patient_id": f"background:{Path(vol.source).name}",
                        "image": relpath(image_path, manifest_path), "label": relpath(label_path, manifest_path),
                        "source": "real-background", "background": Path(vol.source).name,
                        "fold": (i % len(volumes)) % n_folds})  # one patient (background), one fold
    test, val, train = entries[:n_test], entries[n_test:n_test + n_val], entries[n_test + n_val:]
    test = [{k: v for k, v in e.items() if k != "fold"} for e in test]
    val = [{k: v for k, v in e.items() if k != "fold"} for e in val]
    write_manifest(manifest_path, {"training": train, "validation": val, "test": test},
                   extra={"description": f"synthetic nodules in {len(volumes)} real CT background(s), seed {seed}, "
                                         f"{n_cases} cases", "labels": {"0": "background", "1": "nodule"}})
    logger.info("wrote %d real-background cases to %s", n_cases, out)
    return manifest_path
