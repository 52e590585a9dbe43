"""nnU-Net v2 at equal wall-clock: the peer trained on the same cases, for the same minutes, on the same machine.

    python benchmarks/bench_nnunet.py --manifest DATA/manifest.json --out bench_nnunet \
        --nnunet-python /path/to/nnunet-venv/bin/python --budget-min 40 \
        [--setting default] [--setting mem2] [--ours PRED_DIR ...] [--device cpu] [--sections test]

1. **Convert** the manifest to an nnU-Net v2 raw dataset (``Dataset501_MonaiPipelineBench``): the ``training`` and
   ``validation`` cases become ``imagesTr``/``labelsTr`` (links to the manifest's files, named as nnU-Net wants),
   the scored sections (``--sections``, default ``test``) become ``imagesTs``; ``splits_final.json`` makes fold 0
   train on exactly the cases this pipeline trains on and validate on its validation cases.
2. **Plan** each ``--setting`` with nnU-Net's own tools: ``default`` is ``nnUNetv2_plan_and_preprocess`` as is (the
   plan its users start from, configuration ``3d_fullres``); ``memG`` (e.g. ``mem2``) is ``nnUNetv2_plan_experiment
   -gpu_memory_target G``, its documented knob for a smaller patch, under the plans name ``nnUNetPlans_GG``. (Its
   ``2d`` configuration planned 49 slices of 256 x 256 per step for the demo's data: no cheaper on a CPU.)
3. **Train** with ``nnunet_driver.py train`` in nnU-Net's environment: the default trainer, epochs of
   ``--iterations`` iterations, as many as fit ``--budget-min`` (see that file).
4. **Predict** the scored cases with nnU-Net's predictor (mirroring on, as by default, unless
   ``--no-mirroring``: nnU-Net's ``--disable_tta``), and write what
   ``monai-pipeline evaluate`` reads: the mask as ``<case_id>.nii.gz`` and ``<case_id>_lesions.csv`` whose score
   is a component's largest foreground softmax probability (the same kind of score this pipeline gives).
5. **Score** every nnU-Net setting and every ``--ours`` prediction folder (this pipeline's ``infer``/``demo``
   output for the same manifest, trained for the same budget) with ``monai-pipeline evaluate --sections ...``:
   Dice, CPM, sensitivity, false positives per scan. Writes ``results.json`` and ``results.md``.

Every step is skipped when its output exists, so a crashed run resumes. nnU-Net's post-processing (chosen by
``nnUNetv2_find_best_configuration`` from a five-fold cross-validation, which no short budget buys) is not applied.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATASET = "Dataset501_MonaiPipelineBench"
TRAIN_SECTIONS = ("training", "validation")
CONFIGURATION = "3d_fullres"  # nnU-Net's configuration for every setting


def convert(manifest: Path, raw: Path, scored: tuple[str, ...]) -> dict[str, list[str]]:
    """Write the nnU-Net raw dataset for ``manifest`` under ``raw`` (links, dataset.json); returns the split:
    ``train``/``val`` case ids (fold 0) and the ``test`` ids (the ``scored`` sections)."""
    from monai_pipeline.data.manifest import load_manifest

    folder = raw / DATASET
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for section in (*TRAIN_SECTIONS, *scored):
        for e in load_manifest(manifest, section):
            cid, kind = e["case_id"], ("test" if section in scored else "train" if section == "training" else "val")
            split[kind].append(cid)
            images = "imagesTs" if kind == "test" else "imagesTr"
            _link(Path(e["image"]), folder / images / f"{cid}_0000.nii.gz")
            if kind != "test":
                _link(Path(e["label"]), folder / "labelsTr" / f"{cid}.nii.gz")
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "nodule": 1},
                    "numTraining": len(set(split["train"]) | set(split["val"])), "file_ending": ".nii.gz",
                    "name": "monai-pipeline bench", "description": f"converted from {manifest}"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    return split


def _link(src: Path, dst: Path) -> None:
    """A symbolic link ``dst`` -> ``src`` (a compressed NIfTI is linked as is; anything else is refused)."""
    if not str(src).endswith(".nii.gz"):
        raise SystemExit(f"{src}: nnU-Net's dataset needs .nii.gz images and labels; convert it first")
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src.resolve())


def nnunet_env(out: Path) -> dict[str, str]:
    """The environment nnU-Net reads its folders from (and no compilation, which the CPU does not gain from)."""
    env = dict(os.environ, nnUNet_raw=str(out / "raw"), nnUNet_preprocessed=str(out / "preprocessed"),
               nnUNet_results=str(out / "results"), nnUNet_compile="false")
    env.setdefault("nnUNet_n_proc_DA", str(os.cpu_count() or 1))
    return env


def nnunet_tool(python: str, name: str) -> str:
    """An nnU-Net console script installed beside ``python``."""
    tool = Path(python).parent / name
    if not tool.exists():
        raise SystemExit(f"{tool}: not found; --nnunet-python must be the interpreter of an environment with nnunetv2")
    return str(tool)


def plans_name(setting: str) -> str:
    """The nnU-Net plans identifier of a setting (``default`` or ``memG``)."""
    if setting == "default":
        return "nnUNetPlans"
    if setting.startswith("mem"):
        return f"nnUNetPlans_{setting[3:]}G"
    raise SystemExit(f"unknown setting {setting!r}: use default or memG (e.g. mem2)")


def plan(setting: str, python: str, env: dict[str, str], split: dict[str, list[str]], log) -> str:
    """Fingerprint, plan and preprocess for one setting with nnU-Net's tools; returns the plans name."""
    name = plans_name(setting)
    pre = Path(env["nnUNet_preprocessed"]) / DATASET
    if not (pre / f"{name}_{CONFIGURATION}").is_dir():
        run = [nnunet_tool(python, "nnUNetv2_plan_and_preprocess"), "-d", "501", "-c", CONFIGURATION, "-np", "2",
               "--verify_dataset_integrity"]
        if setting.startswith("mem"):
            if not (pre / "nnUNetPlans.json").exists():  # the fingerprint comes with the default plan
                _run(run, env, log)
            gb = setting[3:]
            _run([nnunet_tool(python, "nnUNetv2_plan_experiment"), "-d", "501", "-gpu_memory_target", gb,
                  "-overwrite_plans_name", name], env, log)
            _run([nnunet_tool(python, "nnUNetv2_preprocess"), "-d", "501", "-plans_name", name, "-c", CONFIGURATION,
                  "-np", "2"], env, log)
        else:
            _run(run, env, log)
    (pre / "splits_final.json").write_text(json.dumps([{"train": split["train"], "val": split["val"]}], indent=1))
    return name


def _run(cmd: list[str], env: dict[str, str], log) -> str:
    print("$", " ".join(cmd), file=log, flush=True)
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(r.stdout)
    log.flush()
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed (exit {r.returncode}); see {log.name}:\n{r.stdout[-2000:]}")
    return r.stdout


def train_and_predict(setting: str, args: argparse.Namespace, env: dict[str, str], log) -> tuple[Path, dict]:
    """Train one setting for the budget and predict the scored cases; returns nnU-Net's prediction folder and
    the training record (``budget.json``)."""
    name = plans_name(setting)
    model = Path(env["nnUNet_results"]) / DATASET / f"BudgetTrainer__{name}__{CONFIGURATION}"
    if not (model / "fold_0" / "weights_final.pt").exists():
        _run([args.nnunet_python, str(HERE / "nnunet_driver.py"), "train", "--dataset", DATASET, "--plans", name,
              "--configuration", CONFIGURATION,
              "--budget-min", str(args.budget_min), "--iterations", str(args.iterations), "--device", args.device],
             env, log)
    raw_pred = args.out / "nnunet_raw_predictions" / setting
    if not (raw_pred / "predict.json").exists():
        _run([args.nnunet_python, str(HERE / "nnunet_driver.py"), "predict", "--model", str(model),
              "--configuration", CONFIGURATION, "--images",
              str(Path(env["nnUNet_raw"]) / DATASET / "imagesTs"), "--out", str(raw_pred), "--device", args.device,
              *(["--no-mirroring"] if args.no_mirroring else [])], env, log)
    record = json.loads((model / "fold_0" / "budget.json").read_text())
    record["predict"] = json.loads((raw_pred / "predict.json").read_text())
    return raw_pred, record


def to_pipeline_layout(raw_pred: Path, case_ids: list[str], manifest: Path, out: Path) -> Path:
    """Masks and lesion tables of nnU-Net's predictions in the layout ``evaluate`` reads (see the module docstring).
    The probabilities nnU-Net saves are (class, z, y, x) on the input's grid, the SimpleITK array order."""
    import SimpleITK as sitk

    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.io.geometry import Geometry, sitk_to_xyz_array
    from monai_pipeline.io.layout import PredictionLayout
    from monai_pipeline.postprocess.lesions import lesion_table, write_lesion_csv

    images = {e["case_id"]: e["image"] for s in ("training", "validation", "test") for e in load_manifest(manifest, s)}
    layout = PredictionLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    for cid in case_ids:
        mask_img = sitk.ReadImage(str(raw_pred / f"{cid}.nii.gz"))
        ct = sitk.ReadImage(str(images[cid]))
        geometry = Geometry.from_sitk(ct)
        if not Geometry.from_sitk(mask_img).matches(geometry):
            raise SystemExit(f"{raw_pred / cid}.nii.gz: nnU-Net's mask is not on the grid of {images[cid]}")
        mask = sitk_to_xyz_array(mask_img) > 0
        prob = np.load(raw_pred / f"{cid}.npz")["probabilities"][1]  # (z, y, x)
        if prob.shape != mask.shape[::-1]:
            raise SystemExit(f"{raw_pred / cid}.npz: probabilities {prob.shape} do not match the mask {mask.shape}")
        prob_xyz = prob.transpose(2, 1, 0)
        rows = lesion_table(mask, geometry, sitk_to_xyz_array(ct),
                            score=lambda idx, p=prob_xyz: float(p[idx[:, 0], idx[:, 1], idx[:, 2]].max()))
        shutil.copyfile(raw_pred / f"{cid}.nii.gz", layout.mask(cid))
        write_lesion_csv(rows, layout.lesions(cid))
    return out


def evaluate(pred: Path, manifest: Path, sections: str, report: Path) -> dict:
    """``monai-pipeline evaluate`` on ``pred`` (the CLI, as a user runs it); returns its summary."""
    cmd = [sys.executable, "-m", "monai_pipeline", "evaluate", "--pred", str(pred), "--manifest", str(manifest),
           "--sections", sections, "--out", str(report), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"evaluate failed on {pred}:\n{r.stderr[-2000:]}")
    return json.loads((report / "summary.json").read_text())


def headline(summary: dict) -> dict:
    """Dice (mean over cases), CPM, sensitivity and false positives per scan from an ``evaluate`` summary."""
    return {"dice": summary["metrics"]["dice"]["mean"], "cpm": summary["detection"].get("cpm"),
            "sensitivity": summary["lesion_sensitivity_pooled"],
            "fp_per_scan": summary["lesion_false_positives_per_scan"]}


def ours_training(pred: Path) -> str:
    """Training time and epochs of this pipeline's run beside a demo prediction folder (``../run/log.csv``)."""
    log = pred.resolve().parent / "run" / "log.csv"
    if not log.is_file():
        return ""
    with open(log) as fh:
        rows = list(csv.DictReader(fh))
    return f"{sum(float(r['seconds']) for r in rows) / 60:.1f} min, {len(rows)} epochs"


def table(results: dict) -> str:
    """The side-by-side Markdown table."""
    lines = ["| method | setting | training | Dice | CPM | sensitivity | FP/scan |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        h = r["scores"]
        train = r.get("training", "")
        fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {r['method']} | {name} | {train} | {fmt(h['dice'])} | {fmt(h['cpm'])} | "
                     f"{fmt(h['sensitivity'])} | {fmt(h['fp_per_scan'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--nnunet-python", required=True, help="interpreter of the environment with nnunetv2")
    ap.add_argument("--budget-min", type=float, required=True, help="training wall-clock per setting (minutes)")
    ap.add_argument("--setting", action="append", help="default, or memG (plan for G GB); repeatable")
    ap.add_argument("--iterations", type=int, default=50, help="training iterations per nnU-Net epoch")
    ap.add_argument("--ours", type=Path, action="append", default=[], help="this pipeline's prediction folder(s)")
    ap.add_argument("--sections", default="test", help="manifest sections to score")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-mirroring", action="store_true", help="predict without nnU-Net's mirroring (8x faster)")
    args = ap.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = args.manifest.resolve()
    scored = tuple(s for s in args.sections.split(",") if s)
    env = nnunet_env(args.out)
    results: dict[str, dict] = {}
    with open(args.out / "bench_nnunet.log", "a") as log:
        split = convert(manifest, Path(env["nnUNet_raw"]), scored)
        print(f"nnU-Net dataset: {len(split['train'])} training, {len(split['val'])} validation, "
              f"{len(split['test'])} scored cases", flush=True)
        for setting in args.setting or ["default"]:
            t0 = time.time()
            plan(setting, args.nnunet_python, env, split, log)
            raw_pred, record = train_and_predict(setting, args, env, log)
            pred = to_pipeline_layout(raw_pred, split["test"], manifest, args.out / "predictions" / setting)
            scores = headline(evaluate(pred, manifest, args.sections, args.out / "reports" / setting))
            results[setting] = {"method": "nnU-Net v2", "scores": scores, "record": record,
                                "training": f"{record['train_seconds'] / 60:.1f} min, {record['epochs']} x "
                                            f"{record['iterations_per_epoch']} it, patch {record['patch_size']}, "
                                            f"batch {record['batch_size']}"}
            print(f"nnU-Net {setting}: {scores} ({time.time() - t0:.0f} s)", flush=True)
    for i, pred in enumerate(args.ours):
        scores = headline(evaluate(pred.resolve(), manifest, args.sections, args.out / "reports" / f"ours_{i}"))
        results[f"ours_{i}"] = {"method": "monai-pipeline", "scores": scores, "pred": str(pred),
                                "training": ours_training(pred)}
        print(f"monai-pipeline {pred}: {scores}", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
