"""Verbs that train: ``plan``, ``train``, ``cv`` and ``calibrate`` (library imports deferred: see :mod:`.args`)."""

from __future__ import annotations

import argparse
import os

from monai_pipeline.cli.args import (
    Verb,
    add_device,
    add_no_progress,
    device_or_none,
    folds,
    path_argument,
    positive_float,
    positive_int,
)


def _common(p: argparse.ArgumentParser, out_help: str) -> None:
    path_argument(p, "--manifest", check="input", required=True, help="the manifest (datalist) to train on")
    path_argument(p, "--out", check="out-dir", required=True, help=out_help)
    path_argument(p, "--config", check="input", help="YAML/JSON merged over the default configuration")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: training.epochs of the configuration)")
    add_device(p)
    add_no_progress(p)


def add_train(p: argparse.ArgumentParser) -> None:
    _common(p, "run folder")
    p.add_argument("--fold", type=int, help="train on every fold but this one and validate on it (default: the "
                   "manifest's training and validation sections)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")


def run_train(a: argparse.Namespace) -> int:
    from monai_pipeline.calibration import train_model
    from monai_pipeline.config import load_config

    path = train_model(a.manifest, a.out, load_config(a.config), fold=a.fold, epochs=a.epochs,
                 device=device_or_none(a.device), resume=a.resume, progress=not a.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model: {path}")
    return 0


def add_cv(p: argparse.ArgumentParser) -> None:
    _common(p, "cross-validation folder (resumable)")
    p.add_argument("--folds", type=folds, help="comma-separated folds (default: every fold of the manifest)")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="repeat with training seeds 0..N-1 (OUT/seed_<s>/) and report mean and standard deviation "
                        "(OUT/seeds.json)")
    p.add_argument("--recalibrate", action="store_true",
                   help="train nothing: choose every fold model's operating point again on its fold's cases (at "
                        "the configuration's operating_fp_per_scan, foreground_threshold, lesion_score and TTA), "
                        "then predict and evaluate afresh (after an upgrade, or at another operating point)")
    p.add_argument("--ensemble", action="store_true",
                   help="with --seeds: also average the seeds' models of each fold and evaluate that ensemble out of "
                        "fold (OUT/ensemble/, then an ensemble model of every seed and fold for infer --model)")


def run_cv(a: argparse.Namespace) -> int:
    from monai_pipeline.config import load_config
    from monai_pipeline.crossval import cross_validate, cross_validate_seeds
    from monai_pipeline.errors import InputError
    from monai_pipeline.evaluation import headline
    from monai_pipeline.seeds import format_seeds

    if a.ensemble and a.seeds < 2:
        raise InputError(None, "--ensemble averages the models of several training seeds: give --seeds 2 or more")
    if a.seeds > 1:
        result = cross_validate_seeds(a.manifest, a.out, load_config(a.config), a.seeds, folds=a.folds,
                                      epochs=a.epochs, device=device_or_none(a.device), progress=not a.no_progress,
                                      recalibrate=a.recalibrate, ensemble=a.ensemble)
        print(f"out-of-fold over {a.seeds} training seeds:\n{format_seeds(result)}")
        if a.ensemble:
            print(f"ensemble model for new data: monai-pipeline infer --model {a.out}/ensemble --input CT --out DIR")
        return 0
    res = cross_validate(a.manifest, a.out, load_config(a.config), folds=a.folds, epochs=a.epochs,
                         device=device_or_none(a.device), progress=not a.no_progress, recalibrate=a.recalibrate)
    print(f"out-of-fold: {headline(res)}")
    print(f"ensemble model for new data: monai-pipeline infer --model {a.out} --input CT --out DIR")
    return 0


def add_plan(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    path_argument(src, "--manifest", check="input", help="plan for this manifest's labelled training cases")
    path_argument(src, "--fingerprint", check="input", help="plan from a fingerprint file (e.g. written from "
                  "published metadata) instead of reading the images")
    path_argument(p, "--out", check="out-file", suffixes=(".yaml", ".yml"), required=True,
                  help="the configuration overlay to write (each setting with its reason)")
    p.add_argument("--device", dest="target_device", choices=("cpu", "cuda"), default="cpu",
                   help="the device training will run on (a GPU need not be here with --epochs or --step-seconds)")
    p.add_argument("--memory-gb", type=positive_float,
                   help="memory for training (default: 85%% of the GPU's; on a CPU half the free RAM, at most 8)")
    p.add_argument("--time-budget-min", type=positive_float,
                   help="training time: epochs from the measured seconds of one step on --device")
    p.add_argument("--epochs", type=positive_int, help="epochs instead of a time budget")
    p.add_argument("--step-seconds", type=positive_float,
                   help="seconds of one training step, instead of measuring it (e.g. planning for another machine)")
    p.add_argument("--no-cache", action="store_true", help="read every image again (default: reuse the "
                   "fingerprint cached beside the manifest while the manifest and its files are unchanged)")


def run_plan(a: argparse.Namespace) -> int:
    from monai_pipeline.planning.run import plan_dataset

    result = plan_dataset(a.out, manifest=a.manifest, fingerprint=a.fingerprint, device=a.target_device,
                          memory_gb=a.memory_gb, time_budget_min=a.time_budget_min, epochs=a.epochs,
                          step_seconds=a.step_seconds, cache=not a.no_cache)
    for c in result.choices:
        print(f"{c.key}: {c.value}")
    print(f"plan: {a.out}")
    return 0


def add_calibrate(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--model", check="input", required=True, help="a model file written by train (model.pt)")
    path_argument(p, "--manifest", check="input", required=True, help="the manifest holding its validation cases")
    p.add_argument("--fold", type=int, help="the fold that validated it (train --fold); default: the manifest's "
                   "validation section")
    p.add_argument("--fp-per-scan", type=positive_float,
                   help="false positives per validation scan at the operating point (default: the model's "
                        "training.operating_fp_per_scan)")
    p.add_argument("--fp-reduction", action=argparse.BooleanOptionalAction, default=None,
                   help="fit the second stage first (default: as the model was trained)")
    add_device(p)


def run_calibrate(a: argparse.Namespace) -> int:
    from monai_pipeline.calibration import recalibrate

    point = recalibrate(a.model, a.manifest, a.fold, a.fp_per_scan, a.fp_reduction, device_or_none(a.device))
    at = "none (no threshold keeps a nodule)" if point["threshold"] is None else f"lesion score >= {point['threshold']}"
    print(f"operating point: {at} ({point['fp_per_scan']:.2f} false positives per scan, sensitivity "
          f"{point['sensitivity']:.2f}, second stage {'on' if point['classifier'] else 'off'})")
    print(f"model: {a.model}")
    return 0


VERBS = [
    Verb("plan", "plan a configuration from a dataset fingerprint (spacing, patch, network, epochs for a budget)",
         add_plan, run_plan),
    Verb("train", "train a 3D segmentation network on a manifest", add_train, run_train),
    Verb("cv", "k-fold cross-validation: train each fold, predict its held-out cases, out-of-fold summary; the "
         "folder is then an ensemble model", add_cv, run_cv),
    Verb("calibrate", "choose a trained model's operating point again on its validation cases (after an upgrade, "
         "or at another false-positive rate)", add_calibrate, run_calibrate),
]
