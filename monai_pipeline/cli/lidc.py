"""LIDC-IDRI verbs: ``lidc-convert`` and ``lidc-demo`` (library imports deferred: see :mod:`.args`)."""

from __future__ import annotations

import argparse

from monai_pipeline.cli.args import EXIT_PARTIAL, Verb, add_no_progress, path_argument, positive_int


def add_lidc_convert(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--input", check="input", required=True, help="LIDC-IDRI root in the TCIA layout (DICOM series)")
    path_argument(p, "--out", check="out-dir", required=True, help="output folder (images, labels, manifest.json)")
    path_argument(p, "--xml", check="input",
                  help="folder of XML files to match by SeriesInstanceUID (default: beside the CT)")
    p.add_argument("--consensus", type=float, default=0.5,
                   help="fraction of a nodule's readers that must mark a voxel for the consensus label")
    p.add_argument("--min-diameter-mm", type=float, default=3.0, help="smallest nodule kept (mm; LIDC marks >= 3 mm)")
    p.add_argument("--min-readers", type=positive_int, default=1, help="readers that must have marked a nodule")
    p.add_argument("--per-reader", action="store_true",
                   help="also write each reader's mask and the reader-count map (training.label_mode soft/any-reader)")
    p.add_argument("--workers", type=positive_int, default=1, help="series converted side by side")
    p.add_argument("--folds", type=positive_int, default=5, help="cross-validation folds (by patient)")
    add_no_progress(p)


def run_lidc_convert(a: argparse.Namespace) -> int:
    from monai_pipeline.lidc.convert import convert_lidc

    summary = convert_lidc(a.input, a.out, xml_dir=a.xml, consensus=a.consensus, min_diameter_mm=a.min_diameter_mm,
                           min_readers=a.min_readers, per_reader=a.per_reader, workers=a.workers, n_folds=a.folds,
                           progress=not a.no_progress)
    print(f"converted {summary['converted']}, skipped {summary['skipped']}, failed {summary['failed']}; "
          f"{summary['nodules']} nodule(s) -> {a.out}")
    return EXIT_PARTIAL if summary["failed"] else 0


def add_lidc_demo(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--out", check="out-dir", required=True, help="output folder")
    p.add_argument("--studies", type=positive_int, default=None, help="number of reads (default 20)")
    p.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (Dice not meaningful)")


def run_lidc_demo(a: argparse.Namespace) -> int:
    from monai_pipeline.lidc.lidc_demo import run_lidc_demo as run

    run(a.out, n_studies=a.studies, quick=a.quick)
    return 0


VERBS = [
    Verb("lidc-demo", "LIDC end to end on studies made from the real XML reads: convert, cross-validate each "
         "training.label_mode, reader agreement (CPU, docs/lidc.md)", add_lidc_demo, run_lidc_demo),
    Verb("lidc-convert", "LIDC-IDRI (TCIA layout) to NIfTI images, consensus masks, manifest", add_lidc_convert,
         run_lidc_convert),
]
