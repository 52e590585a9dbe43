"""Verbs that make and check data: ``synth``, ``manifest``, ``convert``, ``check`` (library imports deferred:
see :mod:`.args`)."""

from __future__ import annotations

import argparse

from monai_pipeline.cli.args import (
    Verb,
    add_read_options,
    path_argument,
    positive_int,
    read_options,
    sections,
)


def add_synth(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--out", check="out-dir", required=True, help="output folder (images, labels, manifest.json)")
    p.add_argument("--cases", type=positive_int, help="number of cases (phantoms or --background)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same cases")
    p.add_argument("--format", choices=("nifti", "dicom", "both"), default="nifti",
                   help="write NIfTI volumes, DICOM series, or both")
    p.add_argument("--matrix", type=positive_int, default=512, help="in-plane size in voxels (default 512)")
    p.add_argument("--extent-mm", type=float, default=300.0, help="cranio-caudal coverage in mm (default 300)")
    p.add_argument("--min-diameter-mm", type=float, default=3.0, help="smallest nodule diameter in mm")
    p.add_argument("--pngs", type=int, default=2, help="PNG previews for the first N cases (default 2)")
    path_argument(p, "--background", check="input", nargs="+",
                  help="real chest CT(s) (files or DICOM folders): insert synthetic nodules into their lungs "
                       "instead of drawing phantoms (real anatomy as background)")
    path_argument(p, "--lidc-xml", check="input", nargs="+",
                  help="LIDC-IDRI XML reads (files or folders): one DICOM study per CT read in the TCIA layout, "
                       "with the read's slice positions, UIDs and the readers' nodules (docs/lidc.md)")
    path_argument(p, "--metadata", check="input", help="with --lidc-xml: LIDC-IDRI_MetaData.csv (patient ids)")
    p.add_argument("--margin-mm", type=float, default=15.0,
                   help="with --lidc-xml: slices beyond the first and last marked position (mm, default 15)")
    p.add_argument("--max-slices", type=positive_int, help="with --lidc-xml: skip reads needing more slices")


def run_synth(a: argparse.Namespace) -> int:
    from monai_pipeline.data.synth_dataset import synthesize, synthesize_background
    from monai_pipeline.data.synthetic import SynthConfig
    from monai_pipeline.errors import InputError
    from monai_pipeline.lidc.synth import synthesize_lidc

    if a.lidc_xml:
        s = synthesize_lidc(a.lidc_xml, a.out, metadata=a.metadata, seed=a.seed, margin_mm=a.margin_mm,
                            max_slices=a.max_slices)
        for note in s["skipped"]:
            print(f"skipped: {note}")
        print(f"wrote {s['studies']} LIDC-shaped stud(ies) of {s['patients']} patient(s), {s['nodules']} nodule(s) "
              f"-> {s['root']}")
        return 0
    if a.cases is None:
        raise InputError(None, "synth needs --cases (or --lidc-xml)")
    if a.background:
        m = synthesize_background(a.out, a.background, a.cases, a.seed, (a.min_diameter_mm, 30.0), pngs=a.pngs)
    else:
        cfg = SynthConfig(matrix=a.matrix, extent_z_mm=a.extent_mm, diameter_mm=(a.min_diameter_mm, 30.0))
        m = synthesize(a.out, a.cases, a.seed, a.format, cfg, pngs=a.pngs)
    print(f"wrote {a.cases} case(s) and {m}")
    return 0


def add_manifest(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--images", check="input", required=True,
                  help="folder of CT volumes (or DICOM series folders), or an nnU-Net v2 raw dataset / Decathlon "
                       "task folder (dataset.json, imagesTr, labelsTr)")
    path_argument(p, "--labels", check="input",
                  help="folder of labels named as the images (optional): volumes, or DICOM SEG / RTSTRUCT files "
                       "(<case>.dcm, <case>_seg.dcm, <case>_rtstruct.dcm) drawn on the DICOM series")
    p.add_argument("--label-segment", help="DICOM labels: the SEG segment or RTSTRUCT ROI to use, by number or name "
                                           "(default: all together)")
    path_argument(p, "--out", check="out-file", suffixes=(".json",), required=True, help="manifest file to write")
    p.add_argument("--folds", type=positive_int, default=5, help="cross-validation folds (by patient)")
    p.add_argument("--test-fraction", type=float, default=0.0, help="fraction of patients held out as test")
    p.add_argument("--patient-sep", help="case ids are <patient><SEP><suffix>; split on SEP for the patient id")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")


def run_manifest(a: argparse.Namespace) -> int:
    from monai_pipeline.data.manifest import build_manifest

    print(build_manifest(a.images, a.labels, a.out, a.folds, a.test_fraction, a.patient_sep, a.seed,
                         a.label_segment))
    return 0


def add_convert(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--input", check="input", required=True, help="a CT: DICOM folder or file, NIfTI, NRRD, MHA")
    path_argument(p, "--out", check="out-file", required=True, help="image file to write (.nii.gz, .nrrd, .mha)")
    add_read_options(p)


def run_convert(a: argparse.Namespace) -> int:
    from monai_pipeline.io import read_ct, write_image

    vol = read_ct(a.input, read_options(a))
    write_image(vol.image, a.out)
    g = vol.geometry
    print(f"{a.out}: size {g.size}, spacing {tuple(round(s, 4) for s in g.spacing)} mm")
    return 0


def add_check(p: argparse.ArgumentParser) -> None:
    path_argument(p, "--manifest", check="input", required=True, help="the manifest (datalist) to check")
    p.add_argument("--sections", type=sections, default=None, help="manifest sections, comma separated (default: all)")
    p.add_argument("--classes", type=positive_int, default=2, help="label values allowed: 0..classes-1 (default 2)")
    path_argument(p, "--out", check="out-file", suffixes=(".json",), help="also write the report as JSON to this file")


def run_check(a: argparse.Namespace) -> int:
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


VERBS = [
    Verb("synth", "generate synthetic chest CT cases with nodule labels", add_synth, run_synth),
    Verb("manifest", "build a decathlon-style manifest with patient-level folds", add_manifest, run_manifest),
    Verb("convert", "read a CT (DICOM folder/file, NRRD, MHA, NIfTI) and write NIfTI", add_convert, run_convert),
    Verb("check", "verify a dataset (files, grids, labels, splits, outliers); lists every problem", add_check,
         run_check),
]
