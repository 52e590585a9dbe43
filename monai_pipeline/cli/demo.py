"""The embedded default and the bundle: ``demo`` and ``export-bundle`` (library imports deferred: see
:mod:`.args`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_pipeline.cli.args import Verb, path_argument, positive_int


def add_export_bundle(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--model", check="input", required=True, help="model.pt written by train")
    path_argument(p, "--bundle", check="input", required=True, help="bundle root (holds configs/pipeline.yaml)")


def run_export_bundle(a: argparse.Namespace) -> int:
    from monai_pipeline.bundle import export_to_bundle

    print(export_to_bundle(a.model, a.bundle))
    return 0


def add_demo(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--out", check="out-dir", default=Path("demo_output"), help="output folder")
    p.add_argument("--cases", type=positive_int, default=None, help="synthetic cases (default: the demo's)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: the demo's)")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="train with seeds 0..N-1 on the same data and report mean and standard deviation "
                        "(OUT/seed_<s>/, OUT/seeds.json)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run for smoke tests (minutes less, Dice not meaningful)")


def run_demo(a: argparse.Namespace) -> int:
    from monai_pipeline.demo import run_demo as run

    run(a.out, n_cases=a.cases, epochs=a.epochs, quick=a.quick, seeds=a.seeds)
    return 0


VERBS = [
    Verb("export-bundle", "drop a trained model.pt into a MONAI bundle's models/ folder", add_export_bundle,
         run_export_bundle),
    Verb("demo", "the embedded default: synthesize, train, infer, evaluate (CPU)", add_demo, run_demo),
]
