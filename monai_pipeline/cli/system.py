"""Verbs about the installation itself: ``doctor`` (library imports deferred: see :mod:`.args`). ``completion``
needs the whole parser, so :mod:`.app` defines it."""

from __future__ import annotations

import argparse

from monai_pipeline.cli.args import Verb


def add_doctor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON (for bug reports and scripts)")


def run_doctor(a: argparse.Namespace) -> int:
    import json

    from monai_pipeline.environment import environment, format_environment

    env = environment()
    print(json.dumps(env, indent=1) if a.json else format_environment(env))
    return 0


VERBS = [
    Verb("doctor", "versions of Python, torch, CUDA/cuDNN, MONAI and the rest, GPUs, CPU bf16, free memory",
         add_doctor, run_doctor),
]
