"""Which lesion score ranks candidates better: the maximum or the mean foreground probability over a lesion.

    python benchmarks/bench_lesion_score.py --model demo1/run/model.pt --manifest demo1/data/manifest.json \
        --out bench_score [--kinds max,mean] [--device cpu]

For each score kind (``inference.lesion_score``) the model predicts the manifest's test cases with every
candidate kept (``min_lesion_score`` 0) and ``monai-pipeline evaluate`` scores them against the reference: FROC
CPM over all candidates (the ranking), and the false positives per scan and sensitivity at the operating point
that ``train`` would choose for that kind on the validation cases (``training.operating_fp_per_scan`` of the
model). The masks are the same for every kind; only the scores, and so the ranking and the threshold, differ.
Nothing is chosen on the test cases. Also printed: the elongation of the test candidates that hit a nodule and
of those that do not (a shape feature, not used by either score). Writes ``OUT/results.json`` and
``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")


def at_threshold(scans, threshold: float | None) -> tuple[float, float]:
    """False positives per scan and sensitivity of ``scans`` keeping candidates scoring >= ``threshold``."""
    thr = 0.0 if threshold is None else threshold
    n_nod = sum(len(s.nodule_scores) for s in scans)
    hits = sum(1 for s in scans for v in s.nodule_scores if v is not None and v >= thr)
    fps = sum(1 for s in scans for v in s.fp_scores if v >= thr)
    return fps / max(1, len(scans)), hits / max(1, n_nod)


def matched_scans(pred_dir: Path, entries: list[dict]) -> tuple[list, dict[str, list[float]]]:
    """Each test case's candidates matched to its reference nodules (LUNA16 hit rule; the reference standard of
    ``evaluate``: components of 3 mm and more, candidates on smaller ones ignored), and the elongation of the
    candidates that hit a nodule ("hit") and of those that do not ("miss", ignored ones included)."""
    from monai_pipeline.evaluation.detection import match_scan
    from monai_pipeline.evaluation.evaluate import read_binary_label, reference_lesions, split_reference
    from monai_pipeline.io.geometry import sitk_to_xyz_array

    scans, shape = [], {"hit": [], "miss": []}
    for e in entries:
        with open(pred_dir / f"{e['case_id']}_lesions.csv") as fh:
            rows = list(csv.DictReader(fh))
        ref = read_binary_label(e["label"])
        pred = sitk_to_xyz_array(read_binary_label(pred_dir / f"{e['case_id']}.nii.gz").image)
        standard, _, irrelevant = split_reference(sitk_to_xyz_array(ref.image), ref.geometry)
        _, nodules = reference_lesions(pred, standard, ref.geometry)
        cands = [((float(r["centroid_x_mm"]), float(r["centroid_y_mm"]), float(r["centroid_z_mm"])),
                  float(r["score"])) for r in rows]
        scans.append(match_scan(e["case_id"], cands, nodules, irrelevant))
        for c, r in zip(cands, rows, strict=True):
            alone = match_scan(e["case_id"], [c], nodules, irrelevant)
            hit = any(v is not None for v in alone.nodule_scores)
            shape["hit" if hit else "miss"].append(float(r["elongation"]))
    return scans, shape


def one_kind(kind: str, model: Path, manifest: Path, out: Path, device: str) -> dict:
    from monai_pipeline.calibration import operating_point
    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.evaluation.evaluate import evaluate_folder
    from monai_pipeline.inference import Predictor, cases_from_manifest, run_batch
    from monai_pipeline.model_file import read_model_file

    fp_rate = read_model_file(model)["config"]["training"]["operating_fp_per_scan"]
    settings = {"lesion_score": kind}
    point = operating_point(model, load_manifest(manifest, "validation"), fp_rate, device, inference=settings)
    preds = out / kind / "predictions"
    run_batch(Predictor(model, device=device, inference={**settings, "min_lesion_score": 0.0}),
              cases_from_manifest(manifest, ("test",)), preds, overwrite=True, progress=False)
    res = evaluate_folder(preds, manifest, out / kind / "report", sections=("test",))
    scans, shape = matched_scans(preds, load_manifest(manifest, "test"))
    fps, sens = at_threshold(scans, point["threshold"])
    return {"kind": kind, "cpm": res["detection"]["cpm"], "dice": res["metrics"]["dice"]["mean"],
            "threshold": point["threshold"], "test_fp_per_scan": fps, "test_sensitivity": sens,
            "val_point": point, "elongation": shape}


def table(results: list[dict]) -> str:
    import numpy as np

    lines = ["| score | CPM (all candidates) | threshold (validation) | FP/scan at it | sensitivity at it | "
             "Dice (all candidates kept) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        thr = "none" if r["threshold"] is None else f"{r['threshold']:.8g}"
        lines.append(f"| {r['kind']} | {r['cpm']:.3f} | {thr} | {r['test_fp_per_scan']:.2f} | "
                     f"{r['test_sensitivity']:.3f} | {r['dice']:.3f} |")
    shape = results[0]["elongation"]
    for k in ("hit", "miss"):
        v = np.asarray(shape[k])
        lines.append(f"\nelongation of candidates that {k} a nodule: n={len(v)}"
                     + (f", median {np.median(v):.2f}, range {v.min():.2f}-{v.max():.2f}" if len(v) else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--kinds", default="max,mean")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    results = [one_kind(k, a.model, a.manifest, a.out, a.device) for k in a.kinds.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    (a.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
