"""The shape filter's cut (``postprocess.steps.shape_filter.max_elongation``) chosen on fresh synthetic cases,
then applied once to the held-out test cases.

    python benchmarks/bench_shape_filter.py --model demo1/run/model.pt --manifest demo1/data/manifest.json \
        --out bench_shape [--tuning-cases 8] [--tuning-seed 2031] [--cuts 0,1.5,2,2.5]

The tuning cases are demo-style phantoms from another generator seed than the demo's (so neither the model nor
the test cases have seen them). Each cut is applied at the model's own operating point; the chosen cut is the
one with the fewest false positives per scan whose lesion sensitivity is no lower than without the filter (the
loosest such cut on a tie). The test cases are then scored without the filter and with the chosen cut only.
Writes ``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")


def score(model: Path, manifest: Path, out: Path, cut: float, device: str) -> dict:
    """Dice, sensitivity, false positives per scan and CPM of ``model`` on ``manifest``'s test cases with the
    shape filter at ``cut`` (0 = off)."""
    from monai_pipeline.evaluation.evaluate import evaluate_folder
    from monai_pipeline.inference import Predictor, cases_from_manifest, run_batch

    post = {"steps": {"shape_filter": {"enabled": cut > 0, "max_elongation": cut}}}
    preds = out / f"cut_{cut:g}"
    run_batch(Predictor(model, device=device, postprocess=post), cases_from_manifest(manifest, ("test",)), preds,
              overwrite=True, progress=False)
    res = evaluate_folder(preds, manifest, preds / "report", sections=("test",))
    return {"cut": cut, "dice": res["metrics"]["dice"]["mean"], "sensitivity": res["lesion_sensitivity_pooled"],
            "fp_per_scan": res["lesion_false_positives_per_scan"], "cpm": res["detection"]["cpm"]}


def choose(rows: list[dict]) -> float:
    """The cut with the fewest false positives per scan among those that lose no sensitivity against cut 0 and
    remove at least one false positive (the loosest on a tie); 0 when none does."""
    base = next(r for r in rows if r["cut"] == 0)
    ok = [r for r in rows if r["cut"] > 0 and r["sensitivity"] >= base["sensitivity"] - 1e-9
          and r["fp_per_scan"] < base["fp_per_scan"] - 1e-9]
    if not ok:
        return 0.0
    best = min(r["fp_per_scan"] for r in ok)
    return max(r["cut"] for r in ok if r["fp_per_scan"] == best)


def table(title: str, rows: list[dict]) -> str:
    lines = [f"{title}\n", "| max_elongation | Dice | sensitivity | FP/scan | CPM |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {'off' if r['cut'] == 0 else r['cut']} | {r['dice']:.3f} | {r['sensitivity']:.3f} | "
              f"{r['fp_per_scan']:.2f} | {r['cpm']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from monai_pipeline.data.synth_dataset import synthesize
    from monai_pipeline.demo import DEMO_SYNTH

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True, help="the held-out cases (its test section)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tuning-cases", type=int, default=8)
    p.add_argument("--tuning-seed", type=int, default=2031)
    p.add_argument("--cuts", default="0,1.5,2,2.5")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    cuts = sorted({0.0, *(float(c) for c in a.cuts.split(","))})
    tuning = a.out / "tuning_data" / "manifest.json"
    if not tuning.exists():
        synthesize(tuning.parent, a.tuning_cases, seed=a.tuning_seed, cfg=DEMO_SYNTH, n_test=a.tuning_cases,
                   n_val=0, progress=False)
    tuned = [score(a.model, tuning, a.out / "tuning", c, a.device) for c in cuts]
    chosen = choose(tuned)
    test = [score(a.model, a.manifest, a.out / "test", c, a.device) for c in sorted({0.0, chosen})]
    text = table(f"tuning: {a.tuning_cases} phantoms of generator seed {a.tuning_seed}", tuned) + "\n" + \
        table(f"test (chosen on the tuning cases: {chosen:g})", test)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps({"tuning": tuned, "chosen": chosen, "test": test}, indent=2))
    (a.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
