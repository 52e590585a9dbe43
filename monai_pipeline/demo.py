"""``monai-pipeline demo``: the embedded default, end to end on the CPU.

Synthesises chest CT cases, trains a small 3D UNet on patches, predicts the held-out test cases in their own
geometry, post-processes, evaluates, and writes masks, PNG overlays and a training curve under ``OUT/``:
``data/`` (cases + manifest), ``run/`` (model.pt, logs, training_curve.png), ``predictions/`` (masks, lesion
tables, png/), ``report/`` (metrics.csv, summary.json, dice.png). The last line printed is the mean Dice.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from importlib import resources
from pathlib import Path

import yaml

from monai_pipeline.calibration import train_model
from monai_pipeline.config import PipelineConfig, load_config
from monai_pipeline.data.manifest import load_manifest, write_manifest
from monai_pipeline.data.synth_dataset import synthesize, synthesize_background
from monai_pipeline.data.synthetic import SynthConfig
from monai_pipeline.evaluation import evaluate_folder, format_table, headline
from monai_pipeline.html_report import write_report
from monai_pipeline.inference import Predictor, cases_from_manifest, run_batch, write_prediction
from monai_pipeline.io.writer import atomic_write_text
from monai_pipeline.seeds import SEEDS_FILE, format_seeds, headline_figures, seed_folder, write_seeds
from monai_pipeline.training import latest_checkpoint

logger = logging.getLogger(__name__)

#: the synthetic data of the demo: 256x256 slices (a smaller field of view than a clinical 512 matrix, same
#: anatomy and spacings), 120 mm of the chest, nodules of 5 mm and more
DEMO_SYNTH = SynthConfig(matrix=256, spacing_xy=(0.6, 0.9), spacing_z=(1.0, 2.5), extent_z_mm=120.0,
                         n_nodules=(2, 4), diameter_mm=(5.0, 25.0))
DEMO_CASES, DEMO_TEST, DEMO_VAL = 38, 6, 2
#: real CT of ``../shared/realct`` used by the demo (when present): the background of the real-background
#: training cases (synthetic nodules in its lung bases), and the held-out scan on which false positives are
#: counted (another patient and scanner; never trained on, no nodules; an upper abdomen without lungs)
REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "realct"
REAL_BACKGROUND, REAL_HELD_OUT, REAL_SEEN = "ct_thorax_abdomen_3mm.nii.gz", "ct_dicom_abdomen", \
    "ct_thorax_abdomen_3mm_30slices.nii.gz"
DEMO_REAL_CASES = 4


def demo_config(quick: bool = False, *overlays: str) -> PipelineConfig:
    """``default.yaml`` <- ``configs/demo.yaml`` <- each of ``overlays`` (names of files in ``configs/``);
    ``quick``: 2 epochs of a smaller network (smoke tests), over all of them."""
    files = resources.files("monai_pipeline").joinpath("configs")
    cfg = load_config(*(yaml.safe_load(files.joinpath(name).read_text()) for name in ("demo.yaml", *overlays)))
    if quick:
        cfg = cfg.merged({"training": {"epochs": 2, "val_interval": 1},
                          "network": {"kwargs": {**cfg.network.kwargs, "channels": [8, 16, 32], "strides": [2, 2]}}})
    return cfg


def add_real_background(data: Path, real_ct: Path, n_cases: int, seed: int = 2026) -> int:
    """Real-background training cases (:func:`~monai_pipeline.data.synth_dataset.synthesize_background` on
    :data:`REAL_BACKGROUND`) under ``data/realbg``, appended to the training section of ``data/manifest.json``."""

    sub = synthesize_background(data / "realbg", [real_ct / REAL_BACKGROUND], n_cases, seed=seed,
                                diameter_mm=(5.0, 25.0), progress=False)
    extra = json.loads(sub.read_text())["training"]
    manifest = json.loads((data / "manifest.json").read_text())
    for e in extra:  # every case has the same background (one patient): one fold, as synthesize_background set
        manifest["training"].append({**e, "image": f"realbg/{e['image']}", "label": f"realbg/{e['label']}"})
    sections = {k: manifest[k] for k in ("training", "validation", "test")}
    other = {k: v for k, v in manifest.items() if k not in sections}
    other["description"] = f"{other.get('description', '')}; {len(extra)} real-background cases"
    write_manifest(data / "manifest.json", sections, extra=other)
    return len(extra)


def false_positives_on_real_ct(model: Path, real_ct: Path, out: Path) -> dict:
    """Lesions the model reports on real scans without nodules: :data:`REAL_HELD_OUT` (never trained on) and
    :data:`REAL_SEEN` (the real-background cases' anatomy, so not held out). Written to ``out/real_ct.json``."""

    predictor = Predictor(model, device="cpu")
    counts = {}
    for name in (REAL_HELD_OUT, REAL_SEEN):
        pred = predictor.predict(real_ct / name)
        write_prediction(pred, out / "real_ct", predictor.provenance())
        counts[name] = len(pred.lesions)
    result = {"held_out": REAL_HELD_OUT, "false_positives": counts, "model": str(model),
              "training_data": predictor.training_data}
    atomic_write_text(out / "real_ct.json", json.dumps(result, indent=1))
    return result


def run_demo(out: str | Path, n_cases: int | None = None, epochs: int | None = None, quick: bool = False,
             real_ct: Path | None = REAL_CT, seeds: int = 1) -> dict:
    """The demo (see the module docstring). ``seeds`` > 1 trains, predicts and evaluates once per training seed
    0..N-1 on the same data, each in ``OUT/seed_<s>/``, and returns (and writes to ``OUT/seeds.json``) the mean
    and standard deviation of the figures; one seed keeps the single-run layout and returns its evaluation."""
    out = Path(out)
    t0 = time.time()
    n_cases = n_cases or (5 if quick else DEMO_CASES)
    n_test = 1 if quick else DEMO_TEST
    synth_cfg = SynthConfig(**{**DEMO_SYNTH.__dict__, **({"matrix": 128, "extent_z_mm": 60.0} if quick else {})})
    manifest = out / "data" / "manifest.json"
    if not manifest.exists():
        print(f"[1/4] synthesising {n_cases} chest CT cases -> {out / 'data'}")
        synthesize(out / "data", n_cases, seed=2026, fmt="nifti", cfg=synth_cfg, n_test=n_test,
                   n_val=1 if quick else DEMO_VAL, pngs=2)
        if real_ct is not None and (real_ct / REAL_BACKGROUND).is_file() and not quick:
            n = add_real_background(out / "data", real_ct, DEMO_REAL_CASES)
            print(f"      + {n} real-background training cases: synthetic nodules in the lungs of {REAL_BACKGROUND}")
        elif not quick:
            print(f"      (no real CT at {real_ct}: training on phantoms only)")
    if seeds == 1:
        res, _ = demo_trial(out, manifest, demo_config(quick), epochs, quick, real_ct)
        print(f"demo: {time.time() - t0:.0f} s in all")
        return res
    per_seed = {}
    for s in range(seeds):
        print(f"== training seed {s} of 0..{seeds - 1} -> {seed_folder(out, s)}")
        cfg = demo_config(quick).merged({"training": {"seed": s}})
        res, real = demo_trial(seed_folder(out, s), manifest, cfg, epochs, quick, real_ct)
        per_seed[s] = {**headline_figures(res), **{f"real_ct_fp_{k}": v for k, v in real.items()}}
    result = write_seeds(out, per_seed)
    print(f"demo over {seeds} training seeds ({out / SEEDS_FILE}):\n{format_seeds(result)}")
    print(f"demo: {time.time() - t0:.0f} s in all")
    return result


def demo_trial(out: Path, manifest: Path, cfg: PipelineConfig, epochs: int | None, quick: bool,
               real_ct: Path | None) -> tuple[dict, dict[str, int]]:
    """Train (or resume), predict the test cases and evaluate into ``out``; returns the evaluation summary and the
    lesion counts on the real CT scans without nodules (empty without them)."""
    run = out / "run"
    model = run / "model.pt"
    if not model.exists():
        resume = latest_checkpoint(run) is not None
        print(f"[2/4] training a 3D UNet on patches ({'resuming' if resume else 'CPU'}) -> {run}")
        train_model(manifest, run, cfg, epochs=epochs, device="cpu", resume=resume)
    preds = out / "predictions"
    print(f"[3/4] sliding-window inference on the held-out test cases -> {preds}")
    truth = {e["case_id"]: e["label"] for e in load_manifest(manifest, "test")}
    # the demo owns its output folder: predictions are always made afresh by this model
    run_batch(Predictor(model, device="cpu"), cases_from_manifest(manifest, ("test",)), preds, overlays=truth,
              overwrite=True, preview=True)
    print(f"[4/4] evaluation -> {out / 'report'}")
    if (out / "report").exists():
        shutil.rmtree(out / "report")
    res = evaluate_folder(preds, manifest, out / "report", sections=("test",))
    print(format_table(res))
    print(headline(res))
    html = write_report(out)
    print(f"outputs: masks {preds}/*.nii.gz, previews {preds}/*_preview.png, overlays {preds}/png/, curve "
          f"{run}/training_curve.png, report {out / 'report'}, HTML {html}")
    d, cpm = res["metrics"]["dice"], res["detection"]["cpm"]
    print(f"demo: FROC CPM on the held-out cases: {'n/a' if cpm is None else f'{cpm:.3f}'} "
          f"({res['detection']['n_nodules']} nodules; froc.png in {out / 'report'})")
    real: dict[str, int] = {}
    if real_ct is not None and (real_ct / REAL_HELD_OUT).is_dir() and not quick:
        real = false_positives_on_real_ct(model, real_ct, out / "report")["false_positives"]
        print(f"demo: false positives on real CT without nodules: {real[REAL_HELD_OUT]} on the held-out "
              f"{REAL_HELD_OUT} (never trained on), {real[REAL_SEEN]} on {REAL_SEEN} (its anatomy was a training "
              f"background); {out / 'report' / 'real_ct.json'}")
    print(f"demo: mean Dice on {res['n_cases']} held-out synthetic cases (nodules >= 5 mm): {d['mean']:.3f}")
    return res, real
