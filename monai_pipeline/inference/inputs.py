"""What to predict: the cases of the inputs a user names (files, DICOM series folders, folders of volumes, a
DICOMDIR or a tree searched for series) or of a manifest's sections, and the output name of a single input.
Every entry point (CLI, Python API, demo) asks this module, then hands the cases to the batch runner.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from monai_pipeline.data.manifest import load_manifest
from monai_pipeline.errors import InputError
from monai_pipeline.inference.case import Case
from monai_pipeline.io.dicom import CT_MODALITY, SeriesInfo, is_dicomdir_file, scan_folder
from monai_pipeline.io.paths import WRITABLE_IMAGE_SUFFIXES, case_id_from_path, check_input

logger = logging.getLogger(__name__)


def image_files_of(folder: Path) -> list[Path] | None:
    """The volumes of a folder that holds only image files (NIfTI, NRRD, MHA: a batch), sorted; None for any other
    folder (a DICOM series, or something to refuse when it is read). Hidden files are ignored."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    images = [p for p in files if p.name.lower().endswith(WRITABLE_IMAGE_SUFFIXES)]
    return sorted(images) if images and len(images) == len(files) else None


def cases_from_inputs(inputs: list[str], strict: bool = True, recursive: bool = False,
                      series_uid: str | None = None, allow_non_ct: bool = False) -> list[Case]:
    """The cases of input paths: a file or a DICOM series folder is one case, a folder holding only NIfTI/NRRD/MHA
    volumes one case per volume, and a DICOMDIR file, or any folder with ``recursive``, one case per DICOM series
    found under it (:func:`series_cases`). ``strict``: every path must be a readable file or folder now;
    otherwise (a batch) a bad path becomes that case's failure when its turn comes."""
    out = []
    for p in inputs:
        if strict or recursive:
            check_input(p)
        if recursive or is_dicomdir_file(Path(p)):
            out += series_cases(Path(p), series_uid, allow_non_ct)
            continue
        volumes = image_files_of(Path(p)) if Path(p).is_dir() else None
        out += [Case(case_id_from_path(v), str(v)) for v in volumes or [Path(p)]]
    return out


def series_case_id(info: SeriesInfo) -> str:
    """``<PatientID>_<study>_<series>``: the last eight digits of the Study and Series Instance UIDs (a short hash
    of the UID where that is not unique enough is added by :func:`series_cases`); characters outside
    ``[A-Za-z0-9._-]`` become ``_``."""
    parts = [info.patient_id or "anonymous", info.study_instance_uid.replace(".", "")[-8:],
             info.series_instance_uid.replace(".", "")[-8:]]
    return re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(parts))


def series_cases(root: Path, series_uid: str | None = None, allow_non_ct: bool = False) -> list[Case]:
    """One case per image series under ``root`` (a folder searched recursively, or a DICOMDIR file: its folder),
    read from the folder holding its files and named by :func:`series_case_id`; ``series_uid`` keeps that series
    alone. Series that are not CT are listed and skipped unless ``allow_non_ct``. Refuses (InputError) when
    nothing is left."""
    folder = root.parent if root.is_file() else root
    found = scan_folder(folder, recursive=True)
    for info in found.values():
        logger.info("%s: series %s (%s, %d slices, %s)", folder, info.series_instance_uid, info.modality or "?",
                    info.n_slices, info.series_description or "no description")
    if series_uid is not None:
        if series_uid not in found:
            raise InputError(root, f"has no series with SeriesInstanceUID {series_uid}",
                             hint="found: " + ", ".join(sorted(found)) if found else None)
        found = {series_uid: found[series_uid]}
    chosen = [i for i in found.values() if allow_non_ct or i.modality == CT_MODALITY]
    for info in (i for i in found.values() if not (allow_non_ct or i.modality == CT_MODALITY)):
        logger.warning("%s: series %s is %s, not CT: skipped (--allow-non-ct reads it)", folder,
                       info.series_instance_uid, info.modality or "<no modality>")
    if not chosen:
        raise InputError(root, "holds no CT series under it" if found else "holds no DICOM image series under it")
    ids = [series_case_id(i) for i in chosen]
    cases = []
    for info, cid in zip(chosen, ids, strict=True):
        if ids.count(cid) > 1:
            cid += "_" + hashlib.sha1(info.series_instance_uid.encode()).hexdigest()[:6]
        where = os.path.commonpath([os.path.dirname(f) for f in info.files])
        cases.append(Case(cid, where, info.series_instance_uid))
    return sorted(cases)


def single_output(out: Path, cases: list[Case]) -> tuple[Path, list[Case]]:
    """``--out FILE.nii.gz`` for one input: the prediction folder is the file's folder and the case is named by
    the file, so the mask lands at ``FILE.nii.gz`` (its table beside it as ``FILE_lesions.csv``). Any other
    ``out`` is the prediction folder itself."""
    if not str(out).lower().endswith((".nii.gz", ".nii")):
        return out, cases
    if len(cases) != 1:
        raise InputError(out, f"a mask file name needs one input, got {len(cases)} case(s)",
                         hint="give a folder as --out for several inputs")
    return out.parent, [cases[0]._replace(case_id=case_id_from_path(out))]


def cases_from_manifest(manifest: str | Path, sections: tuple[str, ...] = ("test",)) -> list[Case]:
    """(case_id, image path) pairs of the given manifest sections."""

    entries = [e for s in sections for e in load_manifest(manifest, s)]
    if not entries:
        raise InputError(manifest, f"has no cases in {', '.join(sections)}")
    return [Case(e["case_id"], e["image"]) for e in entries]
