"""Data manifests in the MONAI decathlon datalist format.

``{"training": [...], "validation": [...], "test": [...]}``; each entry has ``image`` (and ``label``) paths
relative to the manifest, plus ``case_id``, ``patient_id`` and ``fold``. Load with
``monai.data.load_decathlon_datalist(path, data_list_key="training")`` or :func:`load_manifest`.

A ``label`` may also be a DICOM SEG or RTSTRUCT drawn on the entry's DICOM series (``label_segment``: which
segment or ROI, by number or name; default all): :func:`load_manifest` hands every caller a NIfTI label read
from it onto the series' grid (:mod:`~monai_pipeline.io.annotations`; cached beside the manifest), keeping the
annotation's path as ``label_source``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from monai_pipeline.data.datasets import dataset_entries, dataset_kind
from monai_pipeline.errors import InputError
from monai_pipeline.io.annotations import CACHE_DIR, annotation_kind, annotation_label
from monai_pipeline.io.paths import case_id_from_path
from monai_pipeline.io.reader import is_image_path
from monai_pipeline.io.writer import atomic_write_text

SECTIONS = ("training", "validation", "test")
#: label names an image's DICOM annotation may also have in a label folder (what ``infer`` writes)
VIEWER_SUFFIXES = ("_seg.dcm", "_rtstruct.dcm")


def assign_folds(patient_ids: Iterable[str], n_folds: int, seed: int = 0) -> dict[str, int]:
    """Deterministic patient-level folds: every case of a patient lands in the same fold, folds balanced."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    unique = sorted(set(patient_ids), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    return {p: i % n_folds for i, p in enumerate(unique)}


def write_manifest(path: str | Path, sections: dict[str, list[dict]], extra: dict | None = None) -> Path:
    """Write a manifest atomically; image/label paths in entries must already be relative to ``path``'s folder."""
    data = {k: list(sections.get(k, [])) for k in SECTIONS}
    if extra:
        data.update(extra)
    return atomic_write_text(path, json.dumps(data, indent=1))


def relpath(target: str | Path, manifest_path: str | Path) -> str:
    return os.path.relpath(Path(target).resolve(), Path(manifest_path).resolve().parent)


#: entry keys holding paths (relative to the manifest's folder): the image, its label, and the reader-count map
#: of ``lidc-convert --per-reader`` (``training.label_mode`` soft / any-reader)
PATH_KEYS = ("image", "label", "label_readers")


def load_manifest(path: str | Path, section: str = "training", base_dir: str | Path | None = None) -> list[dict]:
    """Entries of ``section`` with ``image``/``label`` made absolute (as ``load_decathlon_datalist`` does),
    relative to ``base_dir`` (default: the manifest's folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON (line {err.lineno}: {err.msg})") from err
    if not isinstance(data, dict) or not any(k in data for k in SECTIONS):
        raise InputError(path, "not a decathlon-style manifest (no training/validation/test lists)")
    base = Path(base_dir) if base_dir is not None else path.parent
    out = []
    for i, entry in enumerate(data.get(section, []) or []):
        if not isinstance(entry, dict):
            raise InputError(path, f"{section}[{i}] must be an object with 'image', got {type(entry).__name__}")
        if "image" not in entry:
            raise InputError(path, f"{section}[{i}] has no 'image'")
        e = dict(entry)
        for key in PATH_KEYS:
            if key in e and e[key] is not None:
                e[key] = str((base / e[key]).resolve())
        e.setdefault("case_id", case_id_from_path(e["image"]))
        out.append(resolve_annotation(e, path.parent / CACHE_DIR))
    return out


def resolve_annotation(entry: dict, cache_dir: Path) -> dict:
    """``entry`` with a DICOM SEG/RTSTRUCT ``label`` replaced by its NIfTI reading on the image's grid (the
    annotation kept as ``label_source``); any other entry unchanged."""
    label = entry.get("label")
    if not label or not annotation_kind(label):
        if entry.get("label_segment") is not None:
            raise InputError(label or entry["image"], "label_segment is given but the label is not a DICOM SEG or "
                             "RTSTRUCT")
        return entry
    nifti = annotation_label(label, entry["image"], cache_dir, entry["case_id"], entry.get("label_segment"))
    return {**entry, "label": str(nifti), "label_source": label}


def split_for_fold(path: str | Path, fold: int | None = None) -> tuple[list[dict], list[dict]]:
    """(train, validation) entries. With ``fold`` K the training entries of fold K validate; otherwise the
    manifest's ``validation`` list is used (fold 0 of training when it is empty)."""
    train = load_manifest(path, "training")
    val = load_manifest(path, "validation")
    if fold is None and val:
        return train, val
    k = 0 if fold is None else fold
    folds = sorted({int(e.get("fold", 0)) for e in train})
    if k not in folds:
        raise InputError(path, f"fold must be one of {folds}, got {k}")
    return [e for e in train if int(e.get("fold", 0)) != k], [e for e in train if int(e.get("fold", 0)) == k]


def folder_entries(images_dir: Path, labels_dir: str | Path | None) -> list[dict]:
    """Entries ``{"case_id", "image", "label"?}`` (absolute paths) of an image folder and a label folder whose
    files are named as the images."""
    images = sorted(p for p in images_dir.iterdir() if is_image_path(p) and not p.name.startswith("."))
    if not images:
        raise InputError(images_dir, "holds no images (.nii.gz, .nii, .nrrd, .mha or DICOM folders)")
    entries = []
    for img in images:
        cid = case_id_from_path(img)
        entry = {"case_id": cid, "image": str(img)}
        if labels_dir is not None:
            cands = [p for p in Path(labels_dir).glob(cid + ".*") if case_id_from_path(p) == cid]
            cands += [p for p in (Path(labels_dir) / f"{cid}{s}" for s in VIEWER_SUFFIXES) if p.is_file()]
            if not cands:
                raise InputError(img, f"has no label named {cid}.* in {labels_dir}")
            entry["label"] = str(cands[0])
        entries.append(entry)
    return entries


def build_manifest(images_dir: str | Path, labels_dir: str | Path | None, out: str | Path, n_folds: int = 5,
                   test_fraction: float = 0.0, patient_id_sep: str | None = None, seed: int = 0,
                   label_segment: str | None = None) -> Path:
    """Manifest from an image folder (and a label folder with the same case names), or from an nnU-Net v2 raw
    dataset or Decathlon task folder (:mod:`~monai_pipeline.data.datasets`; its unlabelled test images go to
    ``test``), with patient-level folds.

    The patient id is the case id, or its part before ``patient_id_sep`` (``LIDC-0001_s2`` -> ``LIDC-0001``
    with ``"_"``). ``test_fraction`` of the labelled patients go to ``test``; the rest get folds ``0..n_folds-1``.
    Labels that are DICOM SEG or RTSTRUCT files (segment or ROI ``label_segment``, default all) are read onto
    their series now, so a misplaced annotation is refused before the manifest exists.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(images_dir, "image folder does not exist")
    if dataset_kind(images_dir):
        if labels_dir is not None:
            raise InputError(labels_dir, "a dataset folder brings its own labels: leave out --labels")
        entries, unlabelled = dataset_entries(images_dir)
    else:
        entries, unlabelled = folder_entries(images_dir, labels_dir), []
    for e in entries:
        if label_segment is not None:
            e["label_segment"] = label_segment
        resolve_annotation(e, Path(out).parent / CACHE_DIR)
    for e in entries + unlabelled:
        e["patient_id"] = e["case_id"].split(patient_id_sep)[0] if patient_id_sep else e["case_id"]
        for key in ("image", "label"):
            if key in e:
                e[key] = relpath(e[key], out)
    patients = sorted({e["patient_id"] for e in entries})
    order = assign_folds(patients, max(1, len(patients)), seed)
    n_test = int(round(test_fraction * len(patients)))
    test_patients = {p for p in patients if order[p] < n_test}
    rest = [p for p in patients if p not in test_patients]
    folds = assign_folds(rest, min(n_folds, max(1, len(rest))), seed)
    sections: dict[str, list[dict]] = {"training": [], "validation": [], "test": list(unlabelled)}
    for e in entries:
        if e["patient_id"] in test_patients:
            sections["test"].append(e)
        else:
            sections["training"].append({**e, "fold": folds[e["patient_id"]]})
    return write_manifest(out, sections)
