"""Reference labels drawn in a viewer: a DICOM SEG or RTSTRUCT turned into a label image on its source series'
grid, so that every step that takes a label path (``manifest``, ``check``, ``train``, ``cv``, ``evaluate``, the
planner) takes one.

The annotation is read onto the grid of the image it is listed with (a DICOM series folder), by the SOP Instance
UIDs its frames or contours reference (:mod:`~monai_pipeline.io.dicom_seg`, :mod:`~monai_pipeline.io.rtstruct`),
and written once as a uint8 NIfTI label in a cache folder (``.dicom_labels`` beside the manifest), named by the
case and a hash of the annotation file, the selection and the series' files: a changed annotation or series is
read again, an unchanged one is not. The cached file is written atomically; a failed reading leaves nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pydicom

from monai_pipeline.errors import InputError
from monai_pipeline.io.geometry import xyz_array_to_sitk
from monai_pipeline.io.source import RTSTRUCT_STORAGE, SEG_STORAGE, SourceSeries, source_series
from monai_pipeline.io.writer import write_image

ANNOTATION_KINDS = {SEG_STORAGE: "seg", RTSTRUCT_STORAGE: "rtstruct"}
#: the cache folder, beside the manifest
CACHE_DIR = ".dicom_labels"


def annotation_kind(path: str | Path) -> str | None:
    """``"seg"`` or ``"rtstruct"`` for a DICOM SEG or RT Structure Set file, None for anything else (a NIfTI
    label, a DICOM image, a folder)."""
    p = Path(path)
    if not p.is_file() or p.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")):
        return None
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - not DICOM: not an annotation
        return None
    return ANNOTATION_KINDS.get(str(ds.get("SOPClassUID", "")))


def read_annotation(path: str | Path, src: SourceSeries, selection: str | int | None = None) -> np.ndarray:
    """The annotation at ``path`` (SEG: all segments or the one numbered/labelled ``selection``; RTSTRUCT: all
    ROIs or the one named/numbered ``selection``) as a uint8 mask ((x, y, z), 1 inside) on ``src``'s grid."""
    kind = annotation_kind(path)
    if kind == "seg":
        if importlib.util.find_spec("highdicom") is None:
            raise InputError(path, "reading a DICOM SEG needs highdicom", hint="pip install 'monai-pipeline[dicom]'")
        from monai_pipeline.io.dicom_seg import read_dicom_seg

        return read_dicom_seg(path, src, selection)
    if kind == "rtstruct":
        from monai_pipeline.io.rtstruct import read_rtstruct

        return read_rtstruct(path, src, selection)
    raise InputError(path, "not a DICOM SEG or RTSTRUCT")


def _fingerprint(annotation: Path, image: Path, selection: str | int | None) -> str:
    h = hashlib.sha256(annotation.read_bytes())
    h.update(f"|{selection}|{image.resolve()}|".encode())
    for f in sorted(image.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def annotation_label(annotation: str | Path, image: str | Path, cache_dir: str | Path, case_id: str,
                     selection: str | int | None = None) -> Path:
    """The NIfTI label (uint8, on ``image``'s grid) of the SEG or RTSTRUCT ``annotation`` drawn on the DICOM
    series folder ``image``, read once into ``cache_dir``; one InputError naming the file for anything that
    cannot be placed exactly (another series or frame of reference, missing slices, open contours)."""
    annotation, image = Path(annotation), Path(image)
    target = Path(cache_dir) / f"{case_id}_{_fingerprint(annotation, image, selection)}.nii.gz"
    if target.is_file():
        return target
    src = source_series(image)
    mask = read_annotation(annotation, src, selection)
    return write_image(xyz_array_to_sitk(mask, src.geometry), target)
