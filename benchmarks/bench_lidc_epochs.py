"""How far a longer schedule goes on the LIDC-shaped studies: ``lidc-demo``'s recipe with consensus labels,
2-fold cross-validated at another number of epochs, beside ``lidc-demo``'s own (80 epochs) result.

    make lidc-demo                                   # lidc_demo_output/: the studies, and the 80-epoch models
    python benchmarks/bench_lidc_epochs.py --lidc-demo lidc_demo_output --epochs 240 --val-interval 80 --out cv240

The configuration is ``lidc-demo``'s (:func:`monai_pipeline.lidc.lidc_demo.lidc_demo_config`) with only
``training.epochs``, ``training.val_interval`` and ``training.label_mode: consensus`` changed, on the same
converted manifest and folds. ``OUT`` resumes: fold models already there are not trained again (their held-out
cases are predicted and scored afresh). Printed: out-of-fold case Dice, nodule Dice against the consensus (the
reader-agreement report), lesion sensitivity, false positives per scan and CPM of both runs, and each fold's
validation Dice at each validation. Writes ``OUT/epochs.json``.
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


def main(argv: list[str] | None = None) -> None:
    from monai_pipeline.crossval import cross_validate
    from monai_pipeline.lidc.lidc_demo import lidc_demo_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lidc-demo", type=Path, required=True, help="lidc-demo's output folder")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--val-interval", type=int, default=40)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
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
              "seconds": round(time.time() - t0, 1)}
    (args.out / "epochs.json").write_text(json.dumps(result, indent=1))
    print("| schedule | case Dice | nodule Dice vs consensus | sensitivity | FP/scan | CPM |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['case_dice']:.3f} | {r['nodule_dice_vs_consensus']:.3f} | {r['sensitivity']:.3f} | "
              f"{r['fp_per_scan']:.2f} | {r['cpm']:.3f} |")
    print("validation Dice (epoch, Dice):", json.dumps(result["validations"]))


if __name__ == "__main__":
    main()
