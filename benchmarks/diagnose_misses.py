"""Why nodules are missed: for every reference nodule of a ``monai-pipeline cv`` folder's out-of-fold cases, what
the fold's network gave it before post-processing, and what post-processing did with it.

    python benchmarks/diagnose_misses.py CV [--cases LIDC-IDRI-0015 ...] [--out misses.csv] [--padding constant]

Each fold model predicts its own held-out cases once, with every candidate kept and no second stage. Per nodule of
the reference standard (:func:`monai_pipeline.evaluation.evaluate.split_reference`): its voxels and longest axial
diameter (mm); the largest foreground probability on it and the fraction of its voxels above 0.5 (the
probabilities resampled onto the input grid); the largest component (26-connected, voxels of the input grid) of
the raw decision touching it, with that component's fraction inside the lung region the lung filter uses; and the
verdict:

* ``kept``: the post-processed mask touches the nodule (whether a threshold then keeps it is the operating
  point's business);
* ``removed``: the raw decision touched it, post-processing removed it (e.g. inside a component lying mostly
  outside the lungs, or below ``remove_small``);
* ``no voxel > 0.5``: the network never decided for it.

This is how the sliding window's padding was found (docs/recipe.md, "Thin scans"); ``--padding constant`` shows
the models as MONAI's default padding (0, air under the HU window) made them predict.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

COLUMNS = ("fold", "case_id", "nodule", "voxels", "diameter_mm", "max_probability", "fraction_above_half",
           "raw_component_voxels", "raw_component_in_lungs", "verdict")


def nodule_rows(predictor, entry: dict, fold: int) -> list[dict]:
    """The rows of one held-out case (see the module docstring)."""
    from monai_pipeline.arrays import label_components
    from monai_pipeline.evaluation.evaluate import read_binary_label, split_reference
    from monai_pipeline.inference.export import export_prediction
    from monai_pipeline.io.geometry import axial_axis, sitk_to_xyz_array
    from monai_pipeline.lungs import lung_region
    from monai_pipeline.postprocess import lesion_table
    from monai_pipeline.postprocess.steps import LUNG_FILTER_RESOLUTION_MM

    data = predictor.load(entry["image"])
    probs = predictor.probabilities(data["image"])
    args = (probs, data["image"].affine, data["original"], predictor.cfg, entry["case_id"])
    raw = export_prediction(*args, save_prob=True, postprocess=False)
    post = export_prediction(*args)
    label = read_binary_label(entry["label"])
    standard, _, _ = split_reference(sitk_to_xyz_array(label.image), label.geometry)
    prob = sitk_to_xyz_array(raw.prob)
    lung = predictor.cfg.postprocess.steps["lung_filter"]
    region = lung_region(np.asarray(data["original"][0]), label.geometry.spacing,
                         predictor.cfg.preprocessing.body_threshold_hu, float(lung["lung_closing_mm"]),
                         LUNG_FILTER_RESOLUTION_MM, axis=axial_axis(label.geometry.direction))
    components, _ = label_components(raw.mask > 0, 26)
    voxels = np.bincount(components.ravel())  # component -> size
    table, nodules = lesion_table(standard, label.geometry, return_labels=True)
    rows = []
    for row in table:
        nodule = nodules == row["lesion"]
        touching = np.unique(components[nodule])
        sizes = {int(i): int(voxels[i]) for i in touching if i > 0}
        biggest = max(sizes, key=sizes.get) if sizes else None
        verdict = ("kept" if post.mask[nodule].any() else "removed" if biggest is not None else "no voxel > 0.5")
        rows.append({"fold": fold, "case_id": entry["case_id"], "nodule": row["lesion"], "voxels": int(nodule.sum()),
                     "diameter_mm": round(float(row["longest_axial_diameter_mm"]), 2),
                     "max_probability": round(float(prob[nodule].max()), 3),
                     "fraction_above_half": round(float(np.mean(prob[nodule] > 0.5)), 2),
                     "raw_component_voxels": sizes.get(biggest, 0),
                     "raw_component_in_lungs": round(float(region[components == biggest].mean()), 2)
                     if biggest is not None else "",
                     "verdict": verdict})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cv", type=Path, help="a monai-pipeline cv folder (its cv.json and fold models)")
    ap.add_argument("--cases", nargs="+", help="only these case ids")
    ap.add_argument("--out", type=Path, help="also write the rows as CSV")
    ap.add_argument("--padding", choices=("replicate", "constant"), default="replicate",
                    help="how the sliding window pads a thin scan (default: the pipeline's, replicate)")
    args = ap.parse_args(argv)

    import monai_pipeline.inferers
    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.inference import Predictor

    monai_pipeline.inferers.WINDOW_PADDING = args.padding  # read by every window the predictors build

    index = json.loads((args.cv / "cv.json").read_text())
    entries = load_manifest(index["manifest"], "training")
    rows = []
    print(" ".join(COLUMNS))
    for k, model in sorted(index["folds"].items()):
        predictor = Predictor(args.cv / model, device="cpu",
                              inference={"min_lesion_score": 0.0, "candidate_classifier": None})
        for e in entries:
            if int(e.get("fold", 0)) != int(k) or (args.cases and e["case_id"] not in args.cases):
                continue
            for r in nodule_rows(predictor, e, int(k)):
                rows.append(r)
                print(" ".join(str(r[c]) for c in COLUMNS), flush=True)
    verdicts = [r["verdict"] for r in rows]
    print(f"{len(rows)} nodules: " + ", ".join(f"{v} {verdicts.count(v)}" for v in sorted(set(verdicts))))
    if args.out:
        with open(args.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
