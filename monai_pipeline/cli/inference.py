"""Verbs that predict and clean masks: ``infer`` and ``postprocess`` (library imports deferred: see
:mod:`.args`). The choices of ``--format`` come from the mask-format registry and the post-processing flags
from the step registry, so a new format or step needs no change here."""

from __future__ import annotations

import argparse
import sys

from monai_pipeline.cli.args import (
    EXIT_PARTIAL,
    Verb,
    add_device,
    add_no_progress,
    add_read_options,
    device,
    device_or_none,
    fraction,
    int_list,
    overlap,
    path_argument,
    positive_int,
    read_options,
    sections,
    shard,
    workers,
)
from monai_pipeline.io.formats import format_choices, parse_formats
from monai_pipeline.postprocess.steps import STEPS


def _format(text: str) -> str:
    try:
        parse_formats(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def _add_network_options(p: argparse.ArgumentParser) -> None:
    """How the network runs: overrides of the model's ``inference`` section."""
    p.add_argument("--overlap", type=overlap, help="sliding-window overlap, 0 <= x < 1 (default: the model's)")
    p.add_argument("--sw-batch-size", type=positive_int, help="windows per network call (default: the model's)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="mirroring test-time augmentation, 8 flips (default: the model's configuration)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast on the CPU (default: the model's, auto = where the CPU has native bf16)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="fp16 autocast on a CUDA GPU (default: the model's, on)")
    p.add_argument("--tta-scope", choices=("candidates", "volume"),
                   help="mirror only around the plain pass's candidates, or the whole volume (default: the model's)")
    p.add_argument("--tta-axes", type=int_list, help="axes mirrored by TTA, e.g. 0 or 0,1 (default: the model's)")
    p.add_argument("--resample", choices=("linear", "nearest"),
                   help="back onto the input grid: resample the probability (linear) or the label (nearest); "
                        "default: the model's configuration")


def _add_output_formats(p: argparse.ArgumentParser) -> None:
    """Which mask files each case gets."""
    p.add_argument("--format", type=_format, default="nifti", metavar="{" + ",".join(format_choices()) + "}",
                   help="mask format(s), comma separated: NIfTI (default), DICOM SEG or RTSTRUCT referencing the "
                        "source series (DICOM input), lesion-labels (NIfTI, value k = lesion k of lesions.csv); "
                        "both = nifti,dicom-seg")
    p.add_argument("--seg-segments", choices=("single", "lesion"),
                   help="DICOM SEG: one segment for all lesions, or one per lesion numbered as lesions.csv "
                        "(default: the model's inference.seg_segments, single)")


def add_infer(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--model", check="input", required=True,
                  help="model.pt, a bundle's models/model.pt, or a cv folder")
    src = p.add_mutually_exclusive_group(required=True)
    path_argument(src, "--input", check="single-input", type=str, nargs="+",
                  help="NIfTI/NRRD/MHA files or DICOM series folders (several: a batch)")
    path_argument(src, "--manifest", check="input", help="predict the cases of a manifest's --sections")
    p.add_argument("--recursive", action="store_true",
                   help="find every DICOM series under the --input folders (one case per series, named "
                        "<PatientID>_<study>_<series>; --series-uid keeps one); a DICOMDIR input is read this way")
    p.add_argument("--sections", type=sections, default=("test",),
                   help="manifest sections, comma separated (default: test)")
    path_argument(p, "--out", check="out-dir-or-file", suffixes=(".nii.gz", ".nii"), required=True,
                  help="output folder (masks, tables, done-markers); for one input also a mask file name (.nii.gz)")
    add_device(p)
    p.add_argument("--stitch-device", type=device, help="where full-volume outputs are accumulated (e.g. cpu)")
    _add_network_options(p)
    p.add_argument("--save-prob", action="store_true", help="also write <case>_prob.nii.gz (foreground probability)")
    p.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the model's post-processing (default); --no-postprocess writes the raw decision")
    p.add_argument("--min-score", type=fraction, default=None, help="drop lesions scoring below this (0 keeps "
                   "all; default: the model's operating point, chosen by train on its validation cases)")
    p.add_argument("--foreground-threshold", type=fraction, default=None, help="foreground where its probability "
                   "is above this (default: the model's inference.foreground_threshold, 0.5 = the argmax)")
    p.add_argument("--keep-without-lungs", action="store_true",
                   help="a scan where no lungs are found keeps its candidates (default: an empty mask, warned)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs in --out made by another model or other settings (default: refuse)")
    p.add_argument("--preview", action="store_true",
                   help="also write <case>_preview.png: axial/coronal/sagittal slices through each lesion")
    _add_output_formats(p)
    p.add_argument("--shard", type=shard, help="process the I-th of N slices of the case list, e.g. 0/4")
    p.add_argument("--workers", type=workers, default="auto",
                   help="processes predicting a batch side by side on a CPU, each with its share of the threads "
                        "(default auto: one per CPU thread, at most one per case and per 3 GiB of free memory; "
                        "1 on a GPU or under torchrun)")
    add_no_progress(p)
    add_read_options(p)


def run_infer(a: argparse.Namespace) -> int:
    from monai_pipeline.runtime import keep_freed_memory

    keep_freed_memory()  # before the first large array: per-case arrays reuse memory instead of faulting it in
    from monai_pipeline.inference import (
        CaseOptions,
        Predictor,
        cases_from_inputs,
        cases_from_manifest,
        run_batch,
    )
    from monai_pipeline.inference.batch import predict_single
    from monai_pipeline.inference.inputs import single_output
    from monai_pipeline.io.formats import check_format_inputs

    cases = cases_from_inputs(a.input, strict=len(a.input) == 1, recursive=a.recursive, series_uid=a.series_uid,
                              allow_non_ct=a.allow_non_ct) if a.input else cases_from_manifest(a.manifest, a.sections)
    out, cases = single_output(a.out, cases)
    check_format_inputs(a.format, [c.path for c in cases])
    overrides = {"overlap": a.overlap, "sw_batch_size": a.sw_batch_size, "tta": a.tta, "resample": a.resample,
                 "bf16": a.bf16, "amp": a.amp, "tta_axes": a.tta_axes, "tta_scope": a.tta_scope,
                 "min_lesion_score": a.min_score, "seg_segments": a.seg_segments,
                 "foreground_threshold": a.foreground_threshold}
    post = {"steps": {"lung_filter": {"keep_without_lungs": True}}} if a.keep_without_lungs else None
    predictor = Predictor(a.model, device=device_or_none(a.device), inference=overrides, postprocess=post,
                          read_options=read_options(a), stitch_device=a.stitch_device)
    opts = CaseOptions(out, predictor.provenance(a.save_prob, a.postprocess, a.format), a.save_prob, a.postprocess,
                       a.format, a.preview)
    if a.input and len(cases) == 1 and a.shard is None:  # one input is all-or-nothing: exit 2, nothing written
        pred, written = predict_single(predictor, cases[0], opts, a.overwrite)
        print(f"{written[0]}: {len(pred.lesions)} lesion(s)")
        return 0
    summary = run_batch(predictor, cases, out, shard=a.shard, save_prob=a.save_prob, progress=not a.no_progress,
                        postprocess=a.postprocess, overwrite=a.overwrite, fmt=a.format, preview=a.preview,
                        workers=a.workers)
    print(f"done {summary.done}, skipped {summary.skipped}, failed {summary.failed}")
    for cid, reason in summary.failures:
        print(f"failed: {cid}: {reason}", file=sys.stderr)
    return EXIT_PARTIAL if summary.failed else 0


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_postprocess(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--input", check="input", nargs="+", required=True, help="mask files")
    path_argument(p, "--out", check="out-dir", required=True, help="output folder (masks and lesion tables)")
    path_argument(p, "--image", check="input", nargs="*",
                  help="the CT of each mask (same order): needed by the lung filter, gives the lesions' HU")
    settings = p.add_mutually_exclusive_group()
    path_argument(settings, "--model", check="input", help="take the post-processing settings of this model file")
    path_argument(settings, "--config", check="input", help="YAML/JSON merged over the default configuration")
    g = p.add_argument_group("overrides of the post-processing steps "
                             "(default: the model's, --config's or default.yaml's)")
    for name, spec in STEPS.items():
        doc = (spec.fn.__doc__ or name).strip().splitlines()[0]
        g.add_argument(_flag(name), dest=f"step:{name}", action=argparse.BooleanOptionalAction, default=None,
                       help=f"the {name} step: {doc}")
        for key, param in spec.keywords().items():
            if param.annotation in (bool, "bool"):
                g.add_argument(_flag(key), dest=f"step:{name}:{key}", action=argparse.BooleanOptionalAction,
                               default=None, help=f"{name} setting")
            else:
                g.add_argument(_flag(key), dest=f"step:{name}:{key}", type=float, default=None,
                               help=f"{name} setting")


def step_overrides(a: argparse.Namespace) -> dict:
    """The ``postprocess`` overlay of the step flags given on the command line."""
    steps: dict[str, dict] = {}
    for dest, value in vars(a).items():
        if dest.startswith("step:") and value is not None:
            _, name, *key = dest.split(":")
            steps.setdefault(name, {})[key[0] if key else "enabled"] = value
    return {"steps": steps} if steps else {}


def run_postprocess(a: argparse.Namespace) -> int:
    from monai_pipeline.inference.masks import postprocess_files, postprocess_settings

    cfg = postprocess_settings(a.model, a.config, step_overrides(a))
    for pred in postprocess_files(a.input, a.image, a.out, cfg):
        print(f"{pred.case_id}: {len(pred.lesions)} lesion(s)")
    return 0


VERBS = [
    Verb("infer", "sliding-window inference; masks in each input's own geometry", add_infer, run_infer, teardown=False),
    Verb("postprocess", "clean masks and write lesion tables (the post-processing infer runs)", add_postprocess,
         run_postprocess),
]
