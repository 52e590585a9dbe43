"""How far a longer schedule goes on the LIDC-shaped studies: ``lidc-demo``'s recipe with consensus labels,
2-fold cross-validated at another number of epochs, beside ``lidc-demo``'s own (80 epochs) result.

    make lidc-demo                                   # lidc_demo_output/: the studies, and the 80-epoch models
    python benchmarks/bench_lidc_epochs.py --lidc-demo lidc_demo_output --epochs 240 --val-interval 80 --out cv240

The configuration is ``lidc-demo``'s (:func:`monai_pipeline.lidc.lidc_demo.lidc_demo_config`) with only
``training.epochs``, ``training.val_interval`` and ``training.label_mode: consensus`` changed, on the same
converted manifest and folds. ``OUT`` resumes: fold models already there are not trained again (their held-out
cases are predicted and scored afresh). Printed: out-of-fold case Dice, nodule Dice against the consensus (the
reader-agreement report), lesion sensitivity, false positives per scan and CPM of both runs, and each fold's
validation Dice at each validation, and both runs' figures split by where the synthetic studies put their
nodules (:func:`by_placement`). Writes ``OUT/epochs.json``.

``--placement CV [CV ...]`` only prints that split for cross-validations already run on ``--lidc-demo``'s studies.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")


def figures(summary: dict) -> dict:
    """The headline figures of a cross-validation's out-of-fold ``summary.json``."""
    agree = summary.get("reader_agreement", {})
    return {"case_dice": summary["metrics"]["dice"]["mean"],
            "nodule_dice_vs_consensus": agree.get("model_vs_consensus", {}).get("mean"),
            "sensitivity": summary["lesion_sensitivity_pooled"],
            "fp_per_scan": summary["lesion_false_positives_per_scan"], "cpm": summary["detection"]["cpm"]}


def validations(cv: Path) -> dict[str, list[tuple[int, float]]]:
    """Each fold's (epoch, validation Dice) rows of its ``log.csv``."""
    out = {}
    for log in sorted(cv.glob("fold_*/log.csv")):
        with open(log) as fh:
            out[log.parent.name] = [(int(r["epoch"]), round(float(r["val_mean_dice"]), 3)) for r in csv.DictReader(fh)
                                    if r["val_mean_dice"]]
    return out


def by_placement(cv: Path, synth: Path) -> dict[str, dict]:
    """Out-of-fold figures of the cross-validation ``cv`` (its ``reference_lesions.csv`` and ``metrics.csv``) for
    the studies whose every nodule lies in the phantom's lungs and for those with at least one nodule in a lung
    pocket (``lung_pockets`` of ``synth_lidc.json``): studies, nodules, nodules detected, mean nodule Dice (a
    missed nodule counts 0), mean case Dice and false positives per scan."""
    pockets: dict[str, int] = {}
    for r in json.loads(synth.read_text())["records"]:  # a patient's series share a fold: grouped by patient
        pockets[r["patient_id"]] = pockets.get(r["patient_id"], 0) + r["lung_pockets"]
    with open(cv / "reference_lesions.csv") as fh:
        lesions = list(csv.DictReader(fh))
    with open(cv / "metrics.csv") as fh:
        cases = {r["case_id"]: r for r in csv.DictReader(fh)}
    out = {}
    for group, wanted in (("in the phantom's lungs", False), ("with a lung pocket", True)):
        ids = sorted(c for c in cases if (pockets[c.split("_s")[0]] > 0) == wanted)
        rows = [r for r in lesions if r["case_id"] in ids]
        n = max(len(rows), 1)
        out[group] = {"studies": len(ids), "nodules": len(rows),
                      "detected": sum(r["detected"] == "True" for r in rows),
                      "nodule_dice": round(sum(float(r["lesion_dice"]) for r in rows) / n, 3),
                      "case_dice": round(sum(float(cases[c]["dice"]) for c in ids) / max(len(ids), 1), 3),
                      "fp_per_scan": round(sum(int(cases[c]["lesion_fp"]) for c in ids) / max(len(ids), 1), 2)}
    return out


def every_candidate(cv: Path) -> dict | None:
    """Detection before any threshold, from the validation detections each fold's calibration stored in its model
    file (each fold's model on its own held-out cases): CPM, the largest sensitivity reached and the false
    positives per scan when every candidate is kept. None for model files without them."""
    import torch

    from monai_pipeline.calibration import stored_detections
    from monai_pipeline.evaluation.detection import cpm, froc_curve

    scans = stored_detections([torch.load(m, map_location="cpu", weights_only=True).get("operating_point")
                               for m in sorted(cv.glob("fold_*/model.pt"))])
    if not scans:
        return None
    curve = froc_curve(scans)
    return {"cpm": round(cpm(scans) or 0.0, 3), "max_sensitivity": round(float(curve["sensitivity"].max()), 3),
            "fp_per_scan_all": round(float(curve["fps_per_scan"].max()), 2)}


def print_placement(name: str, split: dict[str, dict]) -> None:
    for group, r in split.items():
        print(f"| {name} | {group} | {r['studies']} | {r['detected']}/{r['nodules']} | {r['nodule_dice']:.3f} | "
              f"{r['case_dice']:.3f} | {r['fp_per_scan']:.2f} |")


PLACEMENT_HEADER = ("| run | studies | number | nodules detected | mean lesion Dice (reference_lesions.csv) "
                    "| case Dice | FP/scan |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |")


def main(argv: list[str] | None = None) -> None:
    from monai_pipeline.crossval import cross_validate
    from monai_pipeline.lidc.lidc_demo import lidc_demo_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lidc-demo", type=Path, required=True, help="lidc-demo's output folder")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--val-interval", type=int, default=40)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--placement", type=Path, nargs="+", help="only print these cross-validations' split")
    args = ap.parse_args(argv)
    synth = args.lidc_demo / "tcia" / "synth_lidc.json"
    if args.placement:
        print(PLACEMENT_HEADER)
        for cv in args.placement:
            print_placement(str(cv), by_placement(cv, synth))
        for cv in args.placement:
            print(f"{cv}: every candidate kept (before the threshold): {every_candidate(cv)}")
        return
    if args.epochs is None or args.out is None:
        ap.error("--epochs and --out are needed to train (or --placement CV to split existing ones)")
    base = lidc_demo_config(False)
    cfg = base.merged({"training": {"epochs": args.epochs, "val_interval": args.val_interval,
                                    "label_mode": "consensus"}})
    t0 = time.time()
    res = cross_validate(args.lidc_demo / "converted" / "manifest.json", args.out, cfg, device="cpu", progress=False)
    rows = {f"{base.training.epochs} epochs (lidc-demo)":
            figures(json.loads((args.lidc_demo / "cv_consensus" / "summary.json").read_text())),
            f"{args.epochs} epochs": figures(res)}
    result = {"rows": rows, "validations": {"lidc-demo": validations(args.lidc_demo / "cv_consensus"),
                                            "this run": validations(args.out)},
              "placement": {"lidc-demo": by_placement(args.lidc_demo / "cv_consensus", synth),
                            "this run": by_placement(args.out, synth)},
              "seconds": round(time.time() - t0, 1)}
    (args.out / "epochs.json").write_text(json.dumps(result, indent=1))
    print("| schedule | case Dice | nodule Dice vs consensus | sensitivity | FP/scan | CPM |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['case_dice']:.3f} | {r['nodule_dice_vs_consensus']:.3f} | {r['sensitivity']:.3f} | "
              f"{r['fp_per_scan']:.2f} | {r['cpm']:.3f} |")
    print("validation Dice (epoch, Dice):", json.dumps(result["validations"]))
    print(PLACEMENT_HEADER)
    for name, split in result["placement"].items():
        print_placement(name, split)


if __name__ == "__main__":
    main()
