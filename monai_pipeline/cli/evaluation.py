"""Verbs that score and show results: ``evaluate`` and ``report`` (library imports deferred: see :mod:`.args`)."""

from __future__ import annotations

import argparse

from monai_pipeline.cli.args import Verb, fraction, non_negative_float, path_argument, sections


def add_evaluate(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--pred", check="input", required=True, help="prediction folder written by infer or cv")
    path_argument(p, "--manifest", check="input", required=True, help="the manifest holding the reference labels")
    path_argument(p, "--out", check="out-dir", help="report folder (default: --pred)")
    p.add_argument("--sections", type=sections, default=None,
                   help="manifest sections to score, comma separated (default: validation,test; with --fold: none)")
    p.add_argument("--fold", type=int, help="also score the training cases of this fold (out-of-fold evaluation)")
    p.add_argument("--include-training", action="store_true",
                   help="score cases the predicting model was trained on, and select the training section too when "
                        "--sections/--fold are not given (default: refuse such cases, exit 2)")
    p.add_argument("--min-overlap", type=fraction, default=0.0, help="fraction of a lesion to cover to detect it")
    p.add_argument("--min-nodule-mm", type=non_negative_float, default=3.0,
                   help="reference components with a smaller longest axial diameter are no nodules: left out of every "
                        "figure, candidates on them ignored (LUNA16; default 3; 0 counts every component)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score the selected cases that have a prediction (default: refuse, naming those without)")


def run_evaluate(a: argparse.Namespace) -> int:
    from monai_pipeline.evaluation import evaluate_folder, format_table, headline

    res = evaluate_folder(a.pred, a.manifest, a.out, sections=a.sections, fold=a.fold,
                          include_training=a.include_training, min_overlap=a.min_overlap,
                          allow_missing=a.allow_missing, min_nodule_mm=a.min_nodule_mm)
    print(format_table(res))
    print(headline(res))
    return 0


def add_report(p: argparse.ArgumentParser) -> None:
    path_argument(p, "folder", check="input", help="a run, prediction or report folder (or one holding several)")
    path_argument(p, "--out", check="out-file", suffixes=(".html", ".htm"),
                  help="HTML file (default: FOLDER/report.html)")


def run_report(a: argparse.Namespace) -> int:
    from monai_pipeline.html_report import write_report

    print(write_report(a.folder, a.out))
    return 0


VERBS = [
    Verb("evaluate", "Dice, IoU, HD95, ASSD, FROC/CPM and reader agreement on held-out cases", add_evaluate,
         run_evaluate),
    Verb("report", "one self-contained HTML page for a training run, inference batch or evaluation", add_report,
         run_report),
]
