"""The second stage (``training.fp_reduction``) against the network's own lesion score, paired on the same
fold models: on the LIDC-shaped studies over several training seeds, and on the demo's model.

    make lidc-demo                                                 # lidc_demo_output/: the studies
    python benchmarks/bench_fp_reduction.py --lidc-demo lidc_demo_output --seeds 3 --out fpr   # about 35 min
    python benchmarks/bench_fp_reduction.py --rank fpr/seed_0/on fpr/seed_1/on fpr/seed_2/on  # ranking only
    python benchmarks/bench_fp_reduction.py --recalibrate fpr/seed_0/on fpr/seed_1/on --out fpr_new  # no training
    monai-pipeline demo --out demo1                                # seed 0's demo model
    python benchmarks/bench_fp_reduction.py --demo demo1 --out fpr_demo                       # about 3 min

``--lidc-demo``: for each seed S, ``lidc-demo``'s configuration with consensus labels and ``training.seed`` S is
cross-validated with the second stage on (``OUT/seed_S/on``); the same fold models are then scored again with it
off (``OUT/seed_S/off``: copies of the models, nothing retrained). Printed: both runs' out-of-fold figures as mean
and standard deviation over the seeds, with the paired difference, then the ranking table of ``--rank``.
Resumable: fold models already there are not trained again.

``--rank CV [CV ...]``: each ``CV`` is a ``monai-pipeline cv`` folder whose fold models stored their validation
candidates (calibrated by this version; ``training.fp_reduction`` on or off does not matter, the candidates are
the network's). For every fold k, fold k's candidates (its model on its own held-out cases) are scored twice: by
the network (the maximum foreground probability) and by the second-stage classifier, each group of a fold's scans
at the point ``cv`` chooses for it: fitted and chosen at ``--fp-per-scan`` on every other group's candidates
(:func:`monai_pipeline.calibration.cross_fitted_groups`; for the second stage on out-of-sample scores). Printed
per CV and as mean and standard deviation over the CVs: CPM, sensitivity at 1 and 4 false positives per scan
(every candidate ranked), and sensitivity and false positives per scan at the cross-fitted threshold (counted on
the candidates with the hit rule, so they differ slightly from ``cv``'s lesion counts on the masks).

``--recalibrate CV [CV ...]``: fold models trained earlier (``monai-pipeline cv`` folders, e.g. the seeds of
``--lidc-demo``), rescored by this version's inference without retraining: each fold model is copied to
``OUT/cv_<i>/on``, calibrated again on its fold's validation cases (second stage on; the stored candidates are
then this version's), and scored on and off as under ``--lidc-demo``. For a change to inference that leaves the
weights valid (the sliding window's padding, 2026-12-07); the fold models' checkpoint choice still reflects the
inference they were trained with. Resumable.

``--demo DEMO``: the demo's model (``DEMO/run/model.pt``) recalibrated on its validation cases with the second
stage off and on (copies in ``OUT/off``, ``OUT/on``), each scored on the demo's test cases and on the real CT
the demo counts false positives on.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

SCORERS = ("network", "second stage")


def fold_candidates(cv: Path) -> dict[int, list[dict]]:
    """Fold -> the validation candidates its model file stored (``operating_point.candidates``)."""
    import torch

    out = {}
    for model in sorted(cv.glob("fold_*/model.pt")):
        point = torch.load(model, map_location="cpu", weights_only=True).get("operating_point") or {}
        if point.get("candidates") is None:
            raise SystemExit(f"{model}: no stored validation candidates (calibrated by an older version?)")
        out[int(model.parent.name.split("_")[1])] = point["candidates"]
    if len(out) < 2:
        raise SystemExit(f"{cv}: needs at least two folds")
    return out


def paired(cv: Path, fp_per_scan: float) -> dict[str, dict]:
    """Both scorers' out-of-fold figures for one cross-validation (see the module docstring)."""
    from monai_pipeline.calibration import cross_fitted_groups, scan_detections
    from monai_pipeline.evaluation.detection import cpm, froc_curve, sensitivity_at

    folds = fold_candidates(cv)
    out = {}
    for name in SCORERS:
        groups = cross_fitted_groups({k: {"candidates": v} for k, v in folds.items()}, fp_per_scan,
                                     fp_reduction=name == "second stage")
        ranked, kept_hits, kept_fp = [], 0, 0
        for k, scans in folds.items():
            for part in groups[k]:
                threshold = part["threshold"] or 0.0
                dets = scan_detections([s for s in scans if s["case_id"] in part["cases"]], part["classifier"])
                ranked += dets
                kept_hits += sum(s is not None and s >= threshold for d in dets for s in d.nodule_scores)
                kept_fp += sum(s >= threshold for d in dets for s in d.fp_scores)
        n_nodules, n_scans = sum(len(d.nodule_scores) for d in ranked), len(ranked)
        at1, at4 = sensitivity_at(froc_curve(ranked), [1.0, 4.0])
        out[name] = {"cpm": round(cpm(ranked) or 0.0, 3), "sensitivity_at_1fp": round(at1, 3),
                     "sensitivity_at_4fp": round(at4, 3), "threshold_sensitivity": round(kept_hits / n_nodules, 3),
                     "threshold_fp_per_scan": round(kept_fp / n_scans, 2), "nodules": n_nodules, "scans": n_scans}
    return out


FIGURES = ("nodule_dice", "case_dice", "sensitivity", "fp_per_scan", "cpm")


def cv_figures(summary: dict) -> dict[str, float]:
    """The out-of-fold figures of a cross-validation's ``summary.json`` compared here."""
    return {"nodule_dice": summary["reader_agreement"]["model_vs_consensus"]["mean"],
            "case_dice": summary["metrics"]["dice"]["mean"], "sensitivity": summary["lesion_sensitivity_pooled"],
            "fp_per_scan": summary["lesion_false_positives_per_scan"], "cpm": summary["detection"]["cpm"]}


def on_and_off(root: Path, manifest: Path, seed: int) -> dict[str, dict]:
    """Cross-validate ``lidc-demo``'s configuration (consensus labels, ``seed``) in ``root/on`` with the second
    stage on, then score the same fold models again with it off in ``root/off`` (copies); fold models already in
    ``root/on`` are used as they are. Returns {"on": figures, "off": figures}."""
    import shutil

    from monai_pipeline.crossval import cross_validate
    from monai_pipeline.lidc.lidc_demo import lidc_demo_config

    figures = {}
    for mode, on in (("on", True), ("off", False)):
        if mode == "off":
            for fold in sorted((root / "on").glob("fold_*")):
                (root / "off" / fold.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(fold / "model.pt", root / "off" / fold.name / "model.pt")
        cfg = lidc_demo_config(False).merged(
            {"training": {"label_mode": "consensus", "seed": seed, "fp_reduction": on}})
        figures[mode] = cv_figures(cross_validate(manifest, root / mode, cfg, device="cpu", progress=False))
    return figures


def train_seeds(lidc_demo: Path, seeds: int, out: Path) -> dict[int, dict[str, dict]]:
    """Seed -> {"on": figures, "off": figures} (see ``--lidc-demo`` in the module docstring)."""
    manifest = lidc_demo / "converted" / "manifest.json"
    return {seed: on_and_off(out / f"seed_{seed}", manifest, seed) for seed in range(seeds)}


def recalibrate(cvs: list[Path], out: Path) -> dict[int, dict[str, dict]]:
    """Index -> {"on", "off"} figures of already trained ``cv`` folders, scored by this version's inference (see
    ``--recalibrate`` in the module docstring)."""
    import shutil

    from monai_pipeline.calibration import calibrate_model
    from monai_pipeline.data.manifest import split_for_fold

    result = {}
    for i, cv in enumerate(cvs):
        manifest = Path(json.loads((cv / "cv.json").read_text())["manifest"])
        root = out / f"cv_{i}"
        for model in sorted(cv.glob("fold_*/model.pt")):
            dst = root / "on" / model.parent.name / "model.pt"
            if (dst.parent / "recalibrated").is_file():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(model, dst)
            _, val_files = split_for_fold(manifest, int(model.parent.name.split("_")[1]))
            calibrate_model(dst, val_files, 1.0, "cpu", fp_reduction=True)
            (dst.parent / "recalibrated").write_text(f"{model}\n")
        result[i] = on_and_off(root, manifest, seed=0)
        print(f"cv_{i} = {cv}", flush=True)
    return result


def print_seeds(result: dict[int, dict[str, dict]], label: str = "seed ") -> None:
    import numpy as np

    print("| out of fold | second stage off | second stage on | paired difference |")
    print("| --- | ---: | ---: | ---: |")
    for key in FIGURES:
        off, on = ([result[s][m][key] for s in result] for m in ("off", "on"))
        print(f"| {key} | {mean_sd(off)} | {mean_sd(on)} | {mean_sd(list(np.subtract(on, off)))} |")
    for s, r in result.items():
        print(f"{label}{s}: " + ", ".join(f"{k} {r['off'][k]:.3f} -> {r['on'][k]:.3f}" for k in FIGURES))


def demo_pair(demo: Path, out: Path) -> dict[str, dict]:
    """The ``--demo`` comparison (module docstring): off/on -> test-case figures and real-CT false positives."""
    import shutil

    from monai_pipeline.calibration import calibrate_model
    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.demo import REAL_CT, false_positives_on_real_ct
    from monai_pipeline.evaluation import evaluate_folder
    from monai_pipeline.inference import Predictor, cases_from_manifest, run_batch

    manifest = demo / "data" / "manifest.json"
    result = {}
    for mode, on in (("off", False), ("on", True)):
        model = out / mode / "model.pt"
        model.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo / "run" / "model.pt", model)
        calibrate_model(model, load_manifest(manifest, "validation"), 1.0, "cpu", on)
        run_batch(Predictor(model, device="cpu"), cases_from_manifest(manifest), out / mode / "pred", progress=False)
        res = evaluate_folder(out / mode / "pred", manifest, out / mode / "eval", sections=["test"])
        result[mode] = {"dice": res["metrics"]["dice"]["mean"], "sensitivity": res["lesion_sensitivity_pooled"],
                        "fp_per_scan": res["lesion_false_positives_per_scan"], "cpm": res["detection"]["cpm"],
                        "real_ct_false_positives": false_positives_on_real_ct(model, REAL_CT, out / mode)[
                            "false_positives"]}
    return result


def mean_sd(values: list[float]) -> str:
    import numpy as np

    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def print_rank(runs: dict[str, dict[str, dict]]) -> None:
    keys = ("cpm", "sensitivity_at_1fp", "sensitivity_at_4fp", "threshold_sensitivity", "threshold_fp_per_scan")
    print("| cv | scorer | CPM | sens. @1 FP/scan | sens. @4 FP/scan | sens. at threshold | FP/scan at threshold |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for cv, res in runs.items():
        for name, r in res.items():
            print(f"| {cv} | {name} | " + " | ".join(f"{r[k]:g}" for k in keys) + " |")
    if len(runs) > 1:
        for name in SCORERS:
            print(f"| mean ± sd over {len(runs)} | {name} | "
                  + " | ".join(mean_sd([res[name][k] for res in runs.values()]) for k in keys) + " |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rank", type=Path, nargs="+", metavar="CV", help="monai-pipeline cv folders to rank")
    mode.add_argument("--lidc-demo", type=Path, help="lidc-demo's output folder: train --seeds cross-validations")
    mode.add_argument("--demo", type=Path, help="a demo output folder (its run/model.pt and data/)")
    mode.add_argument("--recalibrate", type=Path, nargs="+", metavar="CV",
                      help="trained cv folders: recalibrate copies of their fold models and score them")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fp-per-scan", type=float, default=1.0, help="operating point (training.operating_fp_per_scan)")
    ap.add_argument("--out", type=Path, help="output folder (--lidc-demo, --demo, --recalibrate) or JSON file (--rank)")
    args = ap.parse_args(argv)
    if args.rank:
        runs = {str(cv): paired(cv, args.fp_per_scan) for cv in args.rank}
        print_rank(runs)
        if args.out:
            args.out.write_text(json.dumps(runs, indent=1))
        return
    if args.out is None:
        ap.error("--out is needed with --lidc-demo, --demo and --recalibrate")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.demo:
        result = demo_pair(args.demo, args.out)
        print(json.dumps(result, indent=1))
    elif args.recalibrate:
        result = recalibrate(args.recalibrate, args.out)
        print_seeds(result, "cv_")
        print_rank({f"cv_{i}": paired(args.out / f"cv_{i}" / "on", args.fp_per_scan) for i in result})
    else:
        result = train_seeds(args.lidc_demo, args.seeds, args.out)
        print_seeds(result)
        print_rank({f"seed {s}": paired(args.out / f"seed_{s}" / "on", args.fp_per_scan) for s in result})
    (args.out / "fp_reduction.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
