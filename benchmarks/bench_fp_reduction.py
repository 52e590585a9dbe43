"""The second stage (``training.fp_reduction``) against the network's own lesion score, paired on the same
out-of-fold candidates of one or more cross-validations (e.g. one per training seed).

    python benchmarks/bench_fp_reduction.py CV [CV ...] [--fp-per-scan 1] [--out fp_reduction.json]

Each ``CV`` is a ``monai-pipeline cv`` folder whose fold models stored their validation candidates (calibrated by
this version; ``training.fp_reduction`` on or off does not matter, the candidates are the network's). For every
fold k, fold k's candidates (its model on its own held-out cases) are scored twice: by the network (the maximum
foreground probability) and by the second-stage classifier fitted on the *other* folds' candidates. Each fold's
threshold is chosen on the other folds at ``--fp-per-scan``, as ``cv`` chooses it (for the second stage on their
out-of-sample scores, :func:`monai_pipeline.calibration.second_stage_point`). Printed per CV and as mean and
standard deviation over the CVs: CPM, sensitivity at 1 and 4 false positives per scan (every candidate ranked),
and sensitivity and false positives per scan at the cross-fitted threshold. Nothing is retrained or predicted.
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
    from monai_pipeline.calibration import choose_threshold, scan_detections, second_stage_point
    from monai_pipeline.evaluation.detection import cpm, froc_curve, sensitivity_at

    folds = fold_candidates(cv)
    out = {}
    for name in SCORERS:
        ranked, kept_hits, kept_fp, n_nodules, n_scans = [], 0, 0, 0, 0
        for k, scans in folds.items():
            others = [scan for j, v in folds.items() if j != k for scan in v]
            clf, chosen_on = second_stage_point(others, fp_per_scan) if name == "second stage" else \
                (None, scan_detections(others))
            threshold = choose_threshold(chosen_on, fp_per_scan)["threshold"] or 0.0
            dets = scan_detections(scans, clf)
            ranked += dets
            kept_hits += sum(s is not None and s >= threshold for d in dets for s in d.nodule_scores)
            kept_fp += sum(s >= threshold for d in dets for s in d.fp_scores)
            n_nodules += sum(len(d.nodule_scores) for d in dets)
            n_scans += len(dets)
        at1, at4 = sensitivity_at(froc_curve(ranked), [1.0, 4.0])
        out[name] = {"cpm": round(cpm(ranked) or 0.0, 3), "sensitivity_at_1fp": round(at1, 3),
                     "sensitivity_at_4fp": round(at4, 3), "threshold_sensitivity": round(kept_hits / n_nodules, 3),
                     "threshold_fp_per_scan": round(kept_fp / n_scans, 2), "nodules": n_nodules, "scans": n_scans}
    return out


def mean_sd(values: list[float]) -> str:
    import numpy as np

    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cv", type=Path, nargs="+", help="monai-pipeline cv folders")
    ap.add_argument("--fp-per-scan", type=float, default=1.0, help="operating point (training.operating_fp_per_scan)")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    runs = {str(cv): paired(cv, args.fp_per_scan) for cv in args.cv}
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
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
