"""LIDC-shaped studies no setting was chosen on: cross-validated models scored on studies made from other reads.

    python benchmarks/bench_lidc_holdout.py --lidc-demo LIDC_DEMO_OUT --out holdout [--studies 20] \
        --cv base=cv3 --cv tta=cv3_tta ...

``monai-pipeline lidc-demo`` makes its 20 studies from the first reads of ``../shared/lidc`` that meet its rule
(:func:`monai_pipeline.lidc.lidc_demo.select_reads`), and every LIDC-shaped figure in ``docs/`` is out of fold on
them, including the figures that chose settings (the operating point, the decision threshold, TTA). This benchmark
makes ``--studies`` more studies the same way from the *next* reads that meet the rule, of patients not among the
demo's (``OUT/tcia``, ``OUT/converted``, per-reader masks, every case in the manifest's ``test`` section), and
scores on them each ``--cv NAME=DIR``: a ``cv`` folder, or a ``cv --seeds N`` folder (each ``seed_<s>`` scored,
then mean and sample standard deviation). A cv folder predicts as an ensemble of its fold models at its pooled
operating point (``infer --model DIR``), which is how it is used on new cases. Per folder: nodule Dice against the
consensus (a missed nodule counts 0), lesion sensitivity, false positives per scan, CPM (over every candidate, from
each case's candidate table), case Dice, from ``monai-pipeline evaluate``. Adds them to ``OUT/results.json`` and
``OUT/results.md`` (earlier calls' other names are kept; each entry with the versions and git revision that
scored it); predictions already made are reused (``infer`` skips finished cases, and refuses outputs of another
model).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from monai_pipeline.io.writer import atomic_write_text
from monai_pipeline.model_file import versions

FIGURES = ("nodule_dice", "sensitivity", "fp_per_scan", "cpm", "case_dice")


def fresh_reads(candidates: list, patients: set[str], patient_of, n: int) -> list:
    """The first ``n`` of ``candidates`` (reads, in order) whose patient (``patient_of(read)``) is neither in
    ``patients`` nor taken by an earlier one: one study per patient, none of the demo's patients."""
    taken, out = set(patients), []
    for read in candidates:
        if len(out) == n:
            break
        pid = patient_of(read)
        if pid not in taken:
            out.append(read)
            taken.add(pid)
    return out


def make_studies(lidc_demo: Path, out: Path, n: int) -> Path:
    """Synthesize and convert ``n`` studies from the reads after the demo's (see the module docstring); returns
    the manifest, with every case under ``test``. Done once: an existing manifest is reused."""
    from monai_pipeline.lidc.convert import convert_lidc
    from monai_pipeline.lidc.lidc_demo import METADATA, SHARED_LIDC, select_reads
    from monai_pipeline.lidc.synth import load_metadata, plan_layout, synthesize_lidc
    from monai_pipeline.lidc.xml import parse_read

    manifest = out / "converted" / "manifest.json"
    if manifest.is_file():
        return manifest
    demo = json.loads((lidc_demo / "lidc_demo.json").read_text())
    xml_root = lidc_demo / "xml"
    used = {str((xml_root / r).resolve()) for r in demo["reads"]}
    metadata = SHARED_LIDC / METADATA
    meta = load_metadata(metadata)
    patients = {plan_layout(parse_read(xml_root / r), meta).patient_id for r in demo["reads"]}
    candidates = [r for r in select_reads(xml_root, len(used) + 3 * n, meta) if str(r.resolve()) not in used]
    fresh = fresh_reads(candidates, patients, lambda r: plan_layout(parse_read(r), meta).patient_id, n)
    synthesize_lidc(fresh, out / "tcia", metadata=metadata, seed=2027, progress=False)
    conv = convert_lidc(out / "tcia" / "LIDC-IDRI", out / "converted", per_reader=True, n_folds=2, progress=False)
    if conv["failed"]:
        raise SystemExit(f"{out / 'converted'}: {conv['failed']} studies failed to convert (convert.log)")
    data = json.loads(manifest.read_text())
    data["test"], data["training"] = data["training"] + data["test"], []
    manifest.write_text(json.dumps(data, indent=1))
    return manifest


def _cli(*args: object) -> None:
    cmd = [sys.executable, "-m", "monai_pipeline", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def score(model: Path, manifest: Path, out: Path) -> dict:
    """``infer`` the test cases with ``model`` (a cv folder), ``evaluate`` them; the figures of :data:`FIGURES`."""
    _cli("infer", "--model", model, "--manifest", manifest, "--sections", "test", "--out", out, "--no-progress",
         "--device", "cpu")
    _cli("evaluate", "--pred", out, "--manifest", manifest, "--sections", "test")
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "readers.csv") as fh:
        nodules = [float(r["model_vs_consensus"]) for r in csv.DictReader(fh)]
    return {"nodule_dice": sum(nodules) / len(nodules), "nodules": len(nodules),
            "sensitivity": summary["lesion_sensitivity_pooled"],
            "fp_per_scan": summary["lesion_false_positives_per_scan"], "cpm": summary["detection"]["cpm"],
            "case_dice": summary["metrics"]["dice"]["mean"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lidc-demo", type=Path, required=True, help="a lidc-demo output folder (its xml/ and reads)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--cv", action="append", required=True, help="NAME=DIR: a cv (or cv --seeds) folder")
    args = ap.parse_args(argv)
    manifest = make_studies(args.lidc_demo.resolve(), args.out.resolve(), args.studies)
    results = {}
    for spec in args.cv:
        name, folder = spec.split("=", 1)
        seeds = sorted(Path(folder).glob("seed_*")) or [Path(folder)]
        per = {s.name: score(s.resolve(), manifest, args.out.resolve() / "pred" / name / s.name) for s in seeds}
        results[name] = {"folder": folder, "per_seed": per, **{
            f: {"mean": statistics.mean(r[f] for r in per.values()),
                "sd": statistics.stdev(r[f] for r in per.values()) if len(per) > 1 else None} for f in FIGURES}}
        print(name, {f: round(results[name][f]["mean"], 3) for f in FIGURES}, flush=True)
    print(write_results(args.out, results))


def write_results(out: Path, results: dict) -> str:
    """Add ``results`` (name -> figures) to ``OUT/results.json``, replacing entries of the same name and keeping
    the others (earlier calls' settings), and write the table of all of them to ``OUT/results.md``; returns it.
    Each new entry records what scored it: the software versions (with the source checkout's git revision) and
    the time (UTC), since entries of several calls, possibly of several commits, share the file."""
    path = out / "results.json"
    made = {"versions": versions(), "scored_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    every = {**(json.loads(path.read_text()) if path.is_file() else {}),
             **{name: {**r, **made} for name, r in results.items()}}
    atomic_write_text(path, json.dumps(every, indent=1))
    lines = ["| setting | " + " | ".join(FIGURES) + " |", "|---" * (len(FIGURES) + 1) + "|"]
    for name, r in every.items():
        cells = [f"{r[f]['mean']:.3f}" + (f" +- {r[f]['sd']:.3f}" if r[f]["sd"] is not None else "") for f in FIGURES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / "results.md", table)
    return table


if __name__ == "__main__":
    main()
