"""``monai-pipeline``: the command line. Only this module parses arguments; the work lives in the library.

Errors in the input or configuration print one line (``monai-pipeline: error: <file>: <problem>``) and exit
with code 2; a batch in which some cases failed exits with 1 after finishing the others.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from monai_pipeline import __version__

logger = logging.getLogger("monai_pipeline")
EXIT_INPUT, EXIT_PARTIAL = 2, 1


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"shard must look like I/N (e.g. 0/4), got {text!r}") from err
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard must satisfy 0 <= I < N, got {text!r}")
    return i, n


def _overlap(text: str) -> float:
    v = float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"overlap must be >= 0 and < 1, got {v}")
    return v


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _workers(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _sections(text: str) -> tuple[str, ...]:
    from monai_pipeline.data.manifest import SECTIONS

    parts = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in parts if s not in SECTIONS]
    if not parts or bad:
        raise argparse.ArgumentTypeError(f"sections must be among {', '.join(SECTIONS)}, got {text!r}")
    return parts


def _folds(text: str) -> list[int]:
    try:
        folds = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"folds must be comma-separated integers, got {text!r}") from err
    if not folds or min(folds) < 0:
        raise argparse.ArgumentTypeError(f"folds must be integers >= 0, got {text!r}")
    return folds


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def _device(text: str) -> str:
    if text not in ("cpu", "cuda", "auto") and not text.startswith("cuda:"):
        raise argparse.ArgumentTypeError(f"device must be cpu, cuda, cuda:N or auto, got {text!r}")
    return text


def _add_read_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading DICOM")
    g.add_argument("--series-uid", help="SeriesInstanceUID to read from a folder holding several series")
    g.add_argument("--force", action="store_true", help="read series whose modality is not CT")
    g.add_argument("--resample-nonuniform", action="store_true",
                   help="interpolate series with non-uniform spacing / missing slices instead of refusing them")
    g.add_argument("--allow-gantry-tilt", action="store_true", help="read tilted series anyway (approximate grid)")


def _int_list(text: str | None) -> list[int] | None:
    return None if text is None else [int(v) for v in text.split(",") if v.strip()]


def _read_options(args):
    from monai_pipeline.io.reader import ReadOptions

    return ReadOptions(series_uid=args.series_uid, allow_non_ct=args.force,
                       nonuniform="resample" if args.resample_nonuniform else "error",
                       allow_gantry_tilt=args.allow_gantry_tilt)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monai-pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"monai-pipeline {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (and library warnings)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="generate synthetic chest CT cases with nodule labels")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--cases", type=_positive_int, help="number of cases (phantoms or --background)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=("nifti", "dicom", "both"), default="nifti")
    s.add_argument("--matrix", type=_positive_int, default=512, help="in-plane size in voxels (default 512)")
    s.add_argument("--extent-mm", type=float, default=300.0, help="cranio-caudal coverage in mm (default 300)")
    s.add_argument("--min-diameter-mm", type=float, default=3.0)
    s.add_argument("--pngs", type=int, default=2, help="PNG previews for the first N cases (default 2)")
    s.add_argument("--background", nargs="+", type=Path,
                   help="real chest CT(s) (files or DICOM folders): insert synthetic nodules into their lungs "
                        "instead of drawing phantoms (real anatomy as background)")
    s.add_argument("--lidc-xml", nargs="+", type=Path,
                   help="LIDC-IDRI XML reads (files or folders): one DICOM study per CT read in the TCIA layout, "
                        "with the read's slice positions, UIDs and the readers' nodules (docs/lidc.md)")
    s.add_argument("--metadata", type=Path, help="with --lidc-xml: LIDC-IDRI_MetaData.csv (patient ids)")
    s.add_argument("--margin-mm", type=float, default=15.0,
                   help="with --lidc-xml: slices beyond the first and last marked position (mm, default 15)")
    s.add_argument("--max-slices", type=_positive_int, help="with --lidc-xml: skip reads needing more slices")

    s = sub.add_parser("manifest", help="build a decathlon-style manifest with patient-level folds")
    s.add_argument("--images", required=True, type=Path)
    s.add_argument("--labels", type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--folds", type=_positive_int, default=5)
    s.add_argument("--test-fraction", type=float, default=0.0)
    s.add_argument("--patient-sep", help="case ids are <patient><SEP><suffix>; split on SEP for the patient id")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("convert", help="read a CT (DICOM folder/file, NRRD, MHA, NIfTI) and write NIfTI")
    s.add_argument("--input", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    _add_read_options(s)

    s = sub.add_parser("check", help="verify a dataset (files, grids, labels, splits, outliers); lists every problem")
    s.add_argument("--manifest", required=True, type=Path)
    s.add_argument("--sections", type=_sections, default=None, help="default: all")
    s.add_argument("--classes", type=_positive_int, default=2, help="label values allowed: 0..classes-1 (default 2)")
    s.add_argument("--out", type=Path, help="also write the report as JSON to this file")

    s = sub.add_parser("train", help="train a 3D segmentation network on a manifest")
    s.add_argument("--manifest", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path, help="run folder")
    s.add_argument("--config", type=Path, help="YAML/JSON merged over the default configuration")
    s.add_argument("--fold", type=int)
    s.add_argument("--epochs", type=_positive_int)
    s.add_argument("--device", type=_device, default="auto")
    s.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("cv", help="k-fold cross-validation: train each fold, predict its held-out cases, "
                       "out-of-fold summary; the folder is then an ensemble model")
    s.add_argument("--manifest", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path, help="cross-validation folder (resumable)")
    s.add_argument("--folds", type=_folds, help="comma-separated folds (default: every fold of the manifest)")
    s.add_argument("--config", type=Path, help="YAML/JSON merged over the default configuration")
    s.add_argument("--epochs", type=_positive_int)
    s.add_argument("--device", type=_device, default="auto")
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("infer", help="sliding-window inference; masks in each input's own geometry")
    s.add_argument("--model", required=True, type=Path, help="model.pt, a bundle's models/model.pt, or a cv folder")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="NIfTI/NRRD/MHA files or DICOM series folders")
    src.add_argument("--manifest", type=Path)
    s.add_argument("--sections", default="test", help="manifest sections, comma separated (default: test)")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--device", type=_device, default="auto")
    s.add_argument("--stitch-device", type=_device, help="where full-volume outputs are accumulated (e.g. cpu)")
    s.add_argument("--overlap", type=_overlap)
    s.add_argument("--sw-batch-size", type=_positive_int)
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="mirroring test-time augmentation, 8 flips (default: the model's configuration)")
    s.add_argument("--no-bf16", action="store_true", help="disable bf16 autocast on CPU")
    s.add_argument("--tta-scope", choices=("candidates", "volume"),
                   help="mirror only around the plain pass's candidates, or the whole volume (default: the model's)")
    s.add_argument("--tta-axes", help="axes mirrored by TTA, e.g. 0 or 0,1 (default: the model's configuration)")
    s.add_argument("--resample", choices=("linear", "nearest"),
                   help="back onto the input grid: resample the probability (linear) or the label (nearest); "
                        "default: the model's configuration")
    s.add_argument("--save-prob", action="store_true", help="also write <case>_prob.nii.gz (foreground probability)")
    s.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the model's post-processing (default); --no-postprocess writes the raw decision")
    s.add_argument("--overwrite", action="store_true",
                   help="replace outputs in --out made by another model or other settings (default: refuse)")
    s.add_argument("--preview", action="store_true",
                   help="also write <case>_preview.png: axial/coronal/sagittal slices through each lesion")
    s.add_argument("--format", choices=("nifti", "dicom-seg", "both"), default="nifti",
                   help="mask format: NIfTI (default), a DICOM SEG referencing the source series (DICOM input), or both")
    s.add_argument("--shard", type=_shard, help="process the I-th of N slices of the case list, e.g. 0/4")
    s.add_argument("--workers", type=_workers, default="auto",
                   help="processes predicting a batch side by side on a CPU, each with its share of the threads "
                        "(default auto: one per CPU thread, at most one per case and per 3 GiB of free memory; "
                        "1 on a GPU or under torchrun)")
    s.add_argument("--no-progress", action="store_true")
    _add_read_options(s)

    s = sub.add_parser("postprocess", help="clean masks and write lesion tables (the post-processing infer runs)")
    s.add_argument("--input", nargs="+", required=True, type=Path, help="mask files")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--image", nargs="*", type=Path,
                   help="the CT of each mask (same order): needed by the lung filter, gives the lesions' HU")
    settings = s.add_mutually_exclusive_group()
    settings.add_argument("--model", type=Path, help="take the post-processing settings of this model file")
    settings.add_argument("--config", type=Path, help="YAML/JSON merged over the default configuration")
    g = s.add_argument_group("overrides of the postprocess settings (default: the model's, --config's or default.yaml's)")
    g.add_argument("--min-volume-mm3", type=float)
    g.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--opening-mm", type=float)
    g.add_argument("--closing-mm", type=float)
    g.add_argument("--lung-filter", action=argparse.BooleanOptionalAction, default=None)

    s = sub.add_parser("evaluate", help="Dice, IoU, HD95, ASSD, FROC/CPM and reader agreement on held-out cases")
    s.add_argument("--pred", required=True, type=Path)
    s.add_argument("--manifest", required=True, type=Path)
    s.add_argument("--out", type=Path, help="report folder (default: --pred)")
    s.add_argument("--sections", type=_sections, default=None,
                   help="manifest sections to score, comma separated (default: validation,test; with --fold: none)")
    s.add_argument("--fold", type=int, help="also score the training cases of this fold (out-of-fold evaluation)")
    s.add_argument("--include-training", action="store_true",
                   help="score cases the predicting model was trained on (default: refuse, exit 2)")
    s.add_argument("--min-overlap", type=_fraction, default=0.0, help="fraction of a lesion to cover to detect it")

    s = sub.add_parser("report", help="one self-contained HTML page for a training run, inference batch or evaluation")
    s.add_argument("folder", type=Path, help="a run, prediction or report folder (or one holding several)")
    s.add_argument("--out", type=Path, help="HTML file (default: FOLDER/report.html)")

    s = sub.add_parser("export-bundle", help="drop a trained model.pt into a MONAI bundle's models/ folder")
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--bundle", required=True, type=Path, help="bundle root (holds configs/pipeline.yaml)")

    s = sub.add_parser("demo", help="the embedded default: synthesize, train, infer, evaluate (CPU)")
    s.add_argument("--out", type=Path, default=Path("demo_output"))
    s.add_argument("--cases", type=_positive_int, default=None)
    s.add_argument("--epochs", type=_positive_int, default=None)
    s.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (minutes less, Dice not meaningful)")

    s = sub.add_parser("lidc-demo", help="LIDC end to end on studies made from the real XML reads: convert, "
                       "cross-validate each training.label_mode, reader agreement (CPU, docs/lidc.md)")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--studies", type=_positive_int, default=None, help="number of reads (default 20)")
    s.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (Dice not meaningful)")

    s = sub.add_parser("lidc-convert", help="LIDC-IDRI (TCIA layout) to NIfTI images, consensus masks, manifest")
    s.add_argument("--input", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--xml", type=Path, help="folder of XML files to match by SeriesInstanceUID (default: beside the CT)")
    s.add_argument("--consensus", type=float, default=0.5)
    s.add_argument("--min-diameter-mm", type=float, default=3.0)
    s.add_argument("--min-readers", type=_positive_int, default=1)
    s.add_argument("--per-reader", action="store_true")
    s.add_argument("--workers", type=_positive_int, default=1)
    s.add_argument("--folds", type=_positive_int, default=5)
    s.add_argument("--no-progress", action="store_true")
    return p


def _cmd_synth(a) -> int:
    from monai_pipeline.data.synth_dataset import synthesize
    from monai_pipeline.data.synthetic import SynthConfig

    if a.lidc_xml:
        from monai_pipeline.lidc.synth import synthesize_lidc

        summary = synthesize_lidc(a.lidc_xml, a.out, metadata=a.metadata, seed=a.seed, margin_mm=a.margin_mm,
                                  max_slices=a.max_slices)
        for note in summary["skipped"]:
            print(f"skipped: {note}")
        print(f"wrote {summary['studies']} LIDC-shaped stud(ies) of {summary['patients']} patient(s), "
              f"{summary['nodules']} nodule(s) -> {summary['root']}")
        return 0
    if a.cases is None:
        from monai_pipeline.errors import InputError

        raise InputError(None, "synth needs --cases (or --lidc-xml)")
    if a.background:
        from monai_pipeline.data.synth_dataset import synthesize_background

        m = synthesize_background(a.out, a.background, a.cases, a.seed, (a.min_diameter_mm, 30.0), pngs=a.pngs)
        print(f"wrote {a.cases} case(s) and {m}")
        return 0
    cfg = SynthConfig(matrix=a.matrix, extent_z_mm=a.extent_mm, diameter_mm=(a.min_diameter_mm, 30.0))
    m = synthesize(a.out, a.cases, a.seed, a.format, cfg, pngs=a.pngs)
    print(f"wrote {a.cases} case(s) and {m}")
    return 0


def _cmd_manifest(a) -> int:
    from monai_pipeline.data.manifest import build_manifest

    print(build_manifest(a.images, a.labels, a.out, a.folds, a.test_fraction, a.patient_sep, a.seed))
    return 0


def _cmd_convert(a) -> int:
    from monai_pipeline.io import read_ct, write_image

    vol = read_ct(a.input, _read_options(a))
    write_image(vol.image, a.out)
    g = vol.geometry
    print(f"{a.out}: size {g.size}, spacing {tuple(round(s, 4) for s in g.spacing)} mm")
    return 0


def _cmd_train(a) -> int:
    from monai_pipeline.config import load_config
    from monai_pipeline.training import train

    cfg = load_config(a.config)
    path = train(a.manifest, a.out, cfg, fold=a.fold, epochs=a.epochs, device=None if a.device == "auto" else a.device,
                 resume=a.resume, progress=not a.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model: {path}")
    return 0


def _cmd_check(a) -> int:
    from monai_pipeline.data.check import SECTIONS, check_dataset
    from monai_pipeline.errors import InputError
    from monai_pipeline.io.writer import atomic_write_text, dumps_strict

    report = check_dataset(a.manifest, a.sections or SECTIONS, n_classes=a.classes)
    print(report.format())
    if a.out:
        atomic_write_text(a.out, dumps_strict(report.to_dict()))
    if report.errors:
        raise InputError(a.manifest, f"{len(report.errors)} problem(s) found (listed above)")
    return 0


def _cmd_cv(a) -> int:
    from monai_pipeline.config import load_config
    from monai_pipeline.crossval import cross_validate
    from monai_pipeline.evaluation import headline

    res = cross_validate(a.manifest, a.out, load_config(a.config), folds=a.folds, epochs=a.epochs,
                         device=None if a.device == "auto" else a.device, progress=not a.no_progress)
    print(f"out-of-fold: {headline(res)}")
    print(f"ensemble model for new data: monai-pipeline infer --model {a.out} --input CT --out DIR")
    return 0


def _cmd_infer(a) -> int:
    from monai_pipeline.runtime import keep_freed_memory

    keep_freed_memory()  # before the first large array: per-case arrays reuse memory instead of faulting it in
    from monai_pipeline.inference import (
        Predictor,
        cases_from_inputs,
        cases_from_manifest,
        run_batch,
        write_prediction,
    )
    from monai_pipeline.inference.batch import check_existing_outputs

    cases = (cases_from_inputs(a.input, strict=len(a.input) == 1) if a.input else
             cases_from_manifest(a.manifest, tuple(s.strip() for s in a.sections.split(","))))
    predictor = Predictor(a.model, device=None if a.device == "auto" else a.device, overlap=a.overlap,
                          sw_batch_size=a.sw_batch_size, tta=a.tta, bf16=False if a.no_bf16 else None,
                          resample=a.resample, tta_axes=_int_list(a.tta_axes),
                          tta_scope=a.tta_scope, stitch_device=a.stitch_device, read_options=_read_options(a))
    if len(cases) == 1 and a.shard is None:
        # a single input is all-or-nothing: a bad input exits 2 and writes nothing
        cid, path = cases[0]
        provenance = predictor.provenance(a.save_prob, a.postprocess, a.format)
        check_existing_outputs(a.out, [cid], provenance, a.overwrite)
        data = predictor.load(path)
        pred = predictor.predict(data, cid, save_prob=a.save_prob, postprocess=a.postprocess)
        written = write_prediction(pred, a.out, provenance, a.format)
        if a.preview:
            from monai_pipeline.inference.workers import save_preview

            save_preview(data, pred, a.out)
        print(f"{written[0]}: {len(pred.lesions)} lesion(s)")
        return 0
    summary = run_batch(predictor, cases, a.out, shard=a.shard, save_prob=a.save_prob, progress=not a.no_progress,
                        postprocess=a.postprocess, overwrite=a.overwrite, fmt=a.format, preview=a.preview,
                        workers=a.workers)
    print(f"done {summary.done}, skipped {summary.skipped}, failed {summary.failed}")
    for cid, reason in summary.failures:
        print(f"failed: {cid}: {reason}", file=sys.stderr)
    return EXIT_PARTIAL if summary.failed else 0


def _postprocess_config(a):
    """The configuration whose ``postprocess`` section the verb applies: the model's, --config's or the
    defaults, with the command-line overrides merged over it."""
    from monai_pipeline.config import config_from_model_dict, load_config

    if a.model:
        import torch

        from monai_pipeline.errors import InputError

        if not a.model.is_file():
            raise InputError(a.model, "model file does not exist")
        try:
            blob = torch.load(a.model, map_location="cpu", weights_only=True)
            cfg = config_from_model_dict(blob["config"])
        except Exception as err:  # noqa: BLE001 - any unreadable model is one clear error
            raise InputError(a.model, f"not a loadable model file ({err.__class__.__name__})") from err
    else:
        cfg = load_config(a.config)
    flags = {"min_volume_mm3": a.min_volume_mm3, "keep_largest": a.keep_largest, "fill_holes": a.fill_holes,
             "opening_mm": a.opening_mm, "closing_mm": a.closing_mm, "lung_filter": a.lung_filter}
    return cfg.merged({"postprocess": {k: v for k, v in flags.items() if v is not None}})


def _cmd_postprocess(a) -> int:
    from monai_pipeline.data.manifest import case_id_from_path
    from monai_pipeline.errors import InputError
    from monai_pipeline.inference import Prediction, write_prediction
    from monai_pipeline.io import read_ct, read_label, sitk_to_xyz_array
    from monai_pipeline.postprocess import lesion_table, postprocess_case

    cfg = _postprocess_config(a)
    if a.image and len(a.image) != len(a.input):
        raise InputError(None, f"--image must give one CT per mask ({len(a.input)}), got {len(a.image)}")
    if cfg.postprocess.lung_filter and not a.image:
        raise InputError(a.input[0], "the lung filter needs the CT of each mask",
                         hint="give --image (one per mask, same order) or --no-lung-filter")
    for i, path in enumerate(a.input):
        vol = read_label(path)
        g = vol.geometry
        hu = None
        if a.image:
            img = read_ct(a.image[i])
            if not img.geometry.matches(g):
                raise InputError(a.image[i], f"grid differs from the mask {path}")
            hu = sitk_to_xyz_array(img.image)
            g = img.geometry  # the CT's own grid (a NIfTI mask header holds it in float32 only)
        mask = postprocess_case(sitk_to_xyz_array(vol.image), hu, g, cfg)
        cid = case_id_from_path(path)
        rows = lesion_table(mask, g, hu, cfg.postprocess.connectivity)
        write_prediction(Prediction(cid, mask, g, rows), a.out)
        print(f"{cid}: {len(rows)} lesion(s)")
    return 0


def _cmd_evaluate(a) -> int:
    from monai_pipeline.evaluation import evaluate_folder, format_table, headline

    res = evaluate_folder(a.pred, a.manifest, a.out, sections=a.sections, fold=a.fold,
                          include_training=a.include_training, min_overlap=a.min_overlap)
    print(format_table(res))
    print(headline(res))
    return 0


def _cmd_report(a) -> int:
    from monai_pipeline.io.paths import check_output_file
    from monai_pipeline.report import write_report

    if a.out:
        check_output_file(a.out, (".html", ".htm"))
    print(write_report(a.folder, a.out))
    return 0


def _cmd_export_bundle(a) -> int:
    from monai_pipeline.bundle import export_to_bundle
    from monai_pipeline.errors import InputError

    if not (a.bundle / "configs" / "pipeline.yaml").is_file():
        raise InputError(a.bundle, "is not a monai-pipeline bundle (no configs/pipeline.yaml)")
    print(export_to_bundle(a.model, a.bundle))
    return 0


def _cmd_demo(a) -> int:
    from monai_pipeline.demo import run_demo

    run_demo(a.out, n_cases=a.cases, epochs=a.epochs, quick=a.quick)
    return 0


def _cmd_lidc_demo(a) -> int:
    from monai_pipeline.lidc.demo import run_lidc_demo

    run_lidc_demo(a.out, n_studies=a.studies, quick=a.quick)
    return 0


def _cmd_lidc(a) -> int:
    from monai_pipeline.lidc.convert import convert_lidc

    summary = convert_lidc(a.input, a.out, xml_dir=a.xml, consensus=a.consensus, min_diameter_mm=a.min_diameter_mm,
                           min_readers=a.min_readers, per_reader=a.per_reader, workers=a.workers, n_folds=a.folds,
                           progress=not a.no_progress)
    print(f"converted {summary['converted']}, skipped {summary['skipped']}, failed {summary['failed']}; "
          f"{summary['nodules']} nodule(s) -> {a.out}")
    return EXIT_PARTIAL if summary["failed"] else 0


#: per command: arguments that name existing inputs, output folders and output files (checked before any work)
PATH_ARGS: dict[str, dict[str, tuple[str, ...]]] = {
    "synth": {"inputs": ("background", "lidc_xml", "metadata"), "out_dirs": ("out",)},
    "manifest": {"inputs": ("images", "labels"), "out_files": ("out",)},
    "convert": {"inputs": ("input",), "out_images": ("out",)},
    "check": {"inputs": ("manifest",), "out_files": ("out",)},
    "train": {"inputs": ("manifest", "config"), "out_dirs": ("out",)},
    "cv": {"inputs": ("manifest", "config"), "out_dirs": ("out",)},
    "infer": {"inputs": ("model", "manifest"), "out_dirs": ("out",)},
    "postprocess": {"inputs": ("model", "config"), "out_dirs": ("out",)},
    "evaluate": {"inputs": ("pred", "manifest"), "out_dirs": ("out",)},
    "export-bundle": {"inputs": ("model", "bundle")},
    "report": {"inputs": ("folder",), "out_files": ()},
    "demo": {"out_dirs": ("out",)},
    "lidc-demo": {"out_dirs": ("out",)},
    "lidc-convert": {"inputs": ("input", "xml"), "out_dirs": ("out",)},
}


def check_paths(command: str, a: argparse.Namespace) -> None:
    """Every named input exists and is a regular file or folder; every output can be written (one
    :class:`InputError` naming the path, before any work)."""
    from monai_pipeline.io.paths import check_input, check_output_file, check_output_folder

    spec = PATH_ARGS.get(command, {})
    for name in spec.get("inputs", ()):
        value = getattr(a, name, None)
        for v in value if isinstance(value, list) else ([] if value is None else [value]):
            check_input(v)
    for name in spec.get("out_dirs", ()):
        if getattr(a, name, None) is not None:
            check_output_folder(getattr(a, name))
    for name in spec.get("out_files", ()):
        if getattr(a, name, None) is not None:
            check_output_file(getattr(a, name), (".json",))
    for name in spec.get("out_images", ()):
        if getattr(a, name, None) is not None:
            check_output_file(getattr(a, name))
    for name in ("image", "input") if command == "postprocess" else ():
        for value in getattr(a, name, None) or ():
            check_input(value)
    if command == "infer" and a.input and len(a.input) == 1:
        check_input(a.input[0])  # a single input is all-or-nothing; several inputs are a batch
    if command == "infer" and a.format != "nifti":
        _check_dicom_inputs(a)


def _check_dicom_inputs(a: argparse.Namespace) -> None:
    """``--format dicom-seg|both`` needs DICOM series folders as input (and highdicom): refused before any work."""
    from monai_pipeline.errors import InputError

    try:
        import highdicom  # noqa: F401
    except ImportError as err:
        raise InputError(None, f"--format {a.format} needs highdicom",
                         hint="pip install 'monai-pipeline[dicomseg]'") from err

    paths = list(a.input) if a.input else []
    if a.manifest:
        from monai_pipeline.data.manifest import load_manifest

        paths = [e["image"] for s in a.sections.split(",") for e in load_manifest(a.manifest, s.strip())]
    for p in paths:
        if not Path(p).is_dir():
            raise InputError(p, f"--format {a.format} needs a DICOM series folder as input (a SEG references its "
                             "source images)", hint="use --format nifti for this input")


def describe(err: BaseException) -> str:
    """One line for an error the library did not map itself: the file when the error names one."""
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err.__class__.__name__}"
    text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    return f"{err.__class__.__name__}: {text}"[:300]


COMMANDS = {"synth": _cmd_synth, "manifest": _cmd_manifest, "convert": _cmd_convert, "check": _cmd_check,
            "train": _cmd_train, "cv": _cmd_cv,
            "infer": _cmd_infer, "postprocess": _cmd_postprocess, "evaluate": _cmd_evaluate, "export-bundle": _cmd_export_bundle, "report": _cmd_report, "demo": _cmd_demo, "lidc-demo": _cmd_lidc_demo,
            "lidc-convert": _cmd_lidc}


def _quiet_libraries(debug: bool) -> None:
    """Library warnings (pydicom, nibabel, ITK's own console output) would print beside the project's one-line
    message; they are shown only with --debug."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    if debug:
        return
    warnings.filterwarnings("ignore")
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)


#: commands whose process ends without the interpreter's teardown once they return (see runtime.end_process):
#: every output of theirs is written, closed and renamed by then
NO_TEARDOWN = frozenset({"infer"})


def main(argv: list[str] | None = None) -> int:
    """The ``monai-pipeline`` command; returns the exit status. As a console command (``argv`` None), ``infer``
    ends with :func:`~monai_pipeline.runtime.end_process` once its outputs are written: Python's teardown takes
    about 1.1 s with torch and MONAI loaded and writes nothing. So does a process started by torchrun
    (``WORLD_SIZE`` > 1), whatever the command: gloo's threads can abort the interpreter's normal teardown
    ("terminate called without an active exception") after a successful run, and every result is already
    written atomically."""
    args = build_parser().parse_args(argv)
    rc = _main(args)
    if argv is None and (args.command in NO_TEARDOWN or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        from monai_pipeline.runtime import end_process

        end_process(rc)
    return rc


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("monai", "ignite", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _quiet_libraries(args.debug)
    from monai_pipeline.errors import EXIT_PREEMPTED, PipelineError, Preempted

    try:
        check_paths(args.command, args)
        return COMMANDS[args.command](args)
    except Preempted as err:
        print(f"monai-pipeline: preempted: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
    except PipelineError as err:
        if args.debug:
            raise
        print(f"monai-pipeline: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("monai-pipeline: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError, MemoryError) as err:
        if args.debug:
            raise
        print(f"monai-pipeline: error: {describe(err)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INPUT
    except Exception as err:  # noqa: BLE001 - an internal error still gets one line; --debug shows the traceback
        if args.debug:
            raise
        print(f"monai-pipeline: internal error: {describe(err)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(main())
