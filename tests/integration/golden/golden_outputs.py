"""The golden outputs of ``infer``: a fixed small model (``model.pt`` beside this file) on three inputs made with
fixed seeds (a DICOM series, an oblique NIfTI volume, a three-case batch), reduced to hashes; and the oblique
volume once more through ``infer --no-postprocess`` followed by the ``postprocess`` verb.

What is hashed is what a user receives: mask voxels with their grid, the lesion tables (floats rounded to 4
decimals, so the hash states the table's content rather than the last bit of a float sum), the statistics JSON
without the fields that name versions and settings (they change with every release and with the shape of the
configuration; the prediction does not), and the DICOM SEG's pixels with the positions of its frames.

``python tests/integration/golden/golden_outputs.py --train`` trains the fixed model again (only when the model
must change; every golden hash changes with it) and ``--write`` stores the hashes in ``golden.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model.pt"
GOLDEN = HERE / "golden.json"
#: stats JSON fields that describe the software and settings rather than the prediction
VOLATILE_STATS = ("model", "settings", "versions")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def _round(value: str) -> str:
    try:
        return f"{float(value):.4f}"
    except ValueError:
        return value


def hash_mask(path: Path) -> str:
    """Voxels (x, y, z) and the grid (size, spacing, origin, direction to 1e-6 mm) of a NIfTI mask."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    grid = [img.GetSize(), *(np.round(v, 6).tolist() for v in (img.GetSpacing(), img.GetOrigin(),
                                                                    img.GetDirection()))]
    return _digest(np.ascontiguousarray(sitk.GetArrayFromImage(img).astype(np.uint8)).tobytes(),
                   json.dumps(grid).encode())


def hash_table(path: Path) -> str:
    with open(path, newline="") as fh:
        rows = [[_round(v) for v in row] for row in csv.reader(fh)]
    return _digest(json.dumps(rows).encode())


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return obj


def hash_stats(path: Path) -> str:
    data = json.loads(path.read_text())
    kept = {k: v for k, v in data.items() if k not in VOLATILE_STATS}
    return _digest(json.dumps(_rounded(kept), sort_keys=True).encode())


def hash_seg(path: Path) -> str:
    """A DICOM SEG's pixel frames (in file order) and each frame's ImagePositionPatient."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    positions = [[round(float(v), 4) for v in f.PlanePositionSequence[0].ImagePositionPatient]
                 for f in ds.PerFrameFunctionalGroupsSequence]
    return _digest(np.ascontiguousarray(ds.pixel_array.astype(np.uint8)).tobytes(), json.dumps(positions).encode())


def make_inputs(root: Path) -> dict[str, list[str]]:
    """The three inputs, from fixed seeds: ``dicom`` (one series folder), ``oblique`` (one NIfTI file),
    ``batch`` (three NIfTI files)."""
    import SimpleITK as sitk

    from monai_pipeline.data.synth_dataset import synthesize
    from monai_pipeline.data.synthetic import SynthConfig, generate_case

    cfg = SynthConfig(matrix=96, spacing_xy=(0.7, 0.9), spacing_z=(1.5, 2.5), extent_z_mm=60.0, n_nodules=(2, 3),
                      diameter_mm=(6.0, 16.0), orientations=("axial_hf",))
    synthesize(root / "dicom_set", 1, seed=21, fmt="dicom", cfg=cfg, progress=False, pngs=0)
    dicom = sorted(p for p in (root / "dicom_set" / "dicom").iterdir() if p.is_dir())
    oblique = generate_case(8, cfg, case_id="oblique_case", orientation="oblique")
    (root / "oblique").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(oblique.image, str(root / "oblique" / "oblique_case.nii.gz"))
    synthesize(root / "batch_set", 3, seed=33, fmt="nifti", cfg=cfg, progress=False, pngs=0)
    batch = sorted(str(p) for p in (root / "batch_set" / "images").glob("*.nii.gz"))
    return {"dicom": [str(dicom[0])], "oblique": [str(root / "oblique" / "oblique_case.nii.gz")], "batch": batch}


def run_infer(inputs: dict[str, list[str]], out: Path) -> None:
    """``monai-pipeline infer`` as a user runs it, once per input kind, each into its own folder. The phantoms'
    field of view cuts through the body, so no lungs are found in them: since 0.3 that empties a mask unless
    ``--keep-without-lungs`` (given here, so the hashes still pin what 0.2 wrote)."""
    from monai_pipeline.cli import main

    for kind, paths in inputs.items():
        extra = ["--format", "both"] if kind == "dicom" else []
        rc = main(["infer", "--model", str(MODEL), "--input", *paths, "--out", str(out / kind), "--workers", "1",
                   "--no-progress", "--keep-without-lungs", *extra])
        if rc != 0:
            raise RuntimeError(f"infer on {kind} exited {rc}")
    # the raw decision, then the post-processing verb on it: the same mask as infer's in one go
    ct = inputs["oblique"][0]
    steps = [["infer", "--model", str(MODEL), "--input", ct, "--out", str(out / "oblique_raw"), "--workers", "1",
              "--no-progress", "--no-postprocess"],
             ["postprocess", "--input", str(out / "oblique_raw" / Path(ct).name), "--image", ct, "--model", str(MODEL),
              "--out", str(out / "oblique_post"), "--keep-without-lungs"]]
    for argv in steps:
        if main(argv) != 0:
            raise RuntimeError(f"{argv[0]} exited non-zero")


def collect(out: Path) -> dict[str, str]:
    """Every hashed output under ``out`` keyed by ``<kind>/<file name>``."""
    hashes = {}
    for f in sorted(out.rglob("*")):
        rel = f.relative_to(out).as_posix()
        if not f.is_file() or "/." in f"/{rel}":
            continue
        if f.name.endswith("_stats.json"):
            hashes[rel] = hash_stats(f)
        elif f.name.endswith(".csv") and not f.name.startswith(("timings", "failures")):
            hashes[rel] = hash_table(f)
        elif f.name.endswith("_seg.dcm"):
            hashes[rel] = hash_seg(f)
        elif f.name.endswith(".nii.gz"):
            hashes[rel] = hash_mask(f)
    return hashes


def train_model() -> None:
    """The fixed model: the tests' tiny UNet trained for 400 short epochs on six tiny phantoms (seed 7),
    about 90 s on two CPU cores; its masks hold lesions, so the hashes cover post-processing and the tables."""
    import shutil
    import tempfile

    from monai_pipeline.config import load_config
    from monai_pipeline.data.synth_dataset import synthesize
    from monai_pipeline.data.synthetic import SynthConfig
    from monai_pipeline.training import train
    from tests.helpers import TINY_OVERLAY

    cfg = SynthConfig(matrix=96, spacing_xy=(0.7, 0.9), spacing_z=(1.5, 2.5), extent_z_mm=60.0, n_nodules=(2, 3),
                      diameter_mm=(6.0, 16.0))
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp) / "data", 6, seed=7, fmt="nifti", cfg=cfg, n_test=1, n_val=1, progress=False)
        model = train(Path(tmp) / "data" / "manifest.json", Path(tmp) / "run",
                      load_config(TINY_OVERLAY, {"training": {"epochs": 400, "val_interval": 50, "lr": 0.005},
                                                  "patch": {"num_samples": 4}}), device="cpu",
                      progress=False)
        shutil.copy(model, MODEL)


def main() -> int:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", action="store_true", help="train the fixed model again")
    p.add_argument("--write", action="store_true", help="store the hashes in golden.json")
    a = p.parse_args()
    if a.train:
        train_model()
    with tempfile.TemporaryDirectory() as tmp:
        run_infer(make_inputs(Path(tmp) / "in"), Path(tmp) / "out")
        hashes = collect(Path(tmp) / "out")
    print(json.dumps(hashes, indent=1))
    if a.write:
        GOLDEN.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))
    sys.exit(main())
