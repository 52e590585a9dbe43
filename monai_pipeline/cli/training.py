"""Verbs that train: ``train`` and ``cv`` (library imports deferred: see :mod:`.args`)."""

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
    from monai_pipeline.config import load_config
    from monai_pipeline.training import train

    path = train(a.manifest, a.out, load_config(a.config), fold=a.fold, epochs=a.epochs,
                 device=device_or_none(a.device), resume=a.resume, progress=not a.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model: {path}")
    return 0


def add_cv(p: argparse.ArgumentParser) -> None:
    _common(p, "cross-validation folder (resumable)")
    p.add_argument("--folds", type=folds, help="comma-separated folds (default: every fold of the manifest)")


def run_cv(a: argparse.Namespace) -> int:
    from monai_pipeline.config import load_config
    from monai_pipeline.crossval import cross_validate
    from monai_pipeline.evaluation import headline

    res = cross_validate(a.manifest, a.out, load_config(a.config), folds=a.folds, epochs=a.epochs,
                         device=device_or_none(a.device), progress=not a.no_progress)
    print(f"out-of-fold: {headline(res)}")
    print(f"ensemble model for new data: monai-pipeline infer --model {a.out} --input CT --out DIR")
    return 0


VERBS = [
    Verb("train", "train a 3D segmentation network on a manifest", add_train, run_train),
    Verb("cv", "k-fold cross-validation: train each fold, predict its held-out cases, out-of-fold summary; the "
         "folder is then an ensemble model", add_cv, run_cv),
]
