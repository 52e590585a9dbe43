"""DICOM series discovery and validation from headers only (pydicom, ``stop_before_pixels=True``).

The pixel data are read by SimpleITK (GDCM); this module decides *which* files form the series, checks that
they form a regular 3D grid, and reports problems as :class:`~monai_pipeline.errors.InputError`.
Patient-identifying fields (names, birth dates) are never read into logs or metadata.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from monai_pipeline.errors import InputError

logger = logging.getLogger(__name__)

CT_MODALITY = "CT"
#: relative deviation from the median slice spacing tolerated before a series counts as non-uniform
SPACING_TOLERANCE = 0.05
#: degrees between the slice normal and the slice-to-slice step above which a gantry tilt is reported
TILT_TOLERANCE_DEG = 0.5


@dataclass
class SliceHeader:
    path: str
    sop_instance_uid: str
    position: np.ndarray  # ImagePositionPatient, mm (LPS)
    orientation: np.ndarray  # ImageOrientationPatient, 6 values
    instance_number: int | None


@dataclass
class SeriesInfo:
    """Header summary of one DICOM series (no pixel data, no patient identity)."""

    series_instance_uid: str
    modality: str
    slices: list[SliceHeader] = field(default_factory=list)
    study_instance_uid: str = ""
    patient_id: str = ""
    series_description: str = ""

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def files(self) -> list[str]:
        return [s.path for s in self.slices]

    def normal(self) -> np.ndarray:
        iop = self.slices[0].orientation
        return np.cross(iop[:3], iop[3:])

    def sorted_slices(self) -> list[SliceHeader]:
        """Slices ordered by position along the slice normal (ascending), never by instance number."""
        n = self.normal()
        return sorted(self.slices, key=lambda s: float(np.dot(s.position, n)))

    def slice_positions(self) -> np.ndarray:
        """Positions (mm) of the sorted slices along the slice normal."""
        n = self.normal()
        return np.array([float(np.dot(s.position, n)) for s in self.sorted_slices()])


def _is_dicom_file(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            if fh.read(4) == b"DICM":
                return True
    except OSError:
        return False
    # files without preamble (rare, old exports): let pydicom decide
    try:
        pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return True
    except (InvalidDicomError, Exception):  # noqa: BLE001 - any parse failure means "not DICOM"
        return False


def scan_folder(folder: str | Path, recursive: bool = False) -> dict[str, SeriesInfo]:
    """Group the DICOM files of ``folder`` by SeriesInstanceUID, reading headers only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    paths: list[str] = []
    if recursive:
        for root, _, names in os.walk(folder):
            paths.extend(os.path.join(root, n) for n in names)
    else:
        paths = [str(p) for p in folder.iterdir() if p.is_file()]
    series: dict[str, SeriesInfo] = {}
    for path in sorted(paths):
        if not _is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:  # noqa: BLE001
            raise InputError(path, f"unreadable DICOM header ({err.__class__.__name__}: {err})") from err
        uid = str(ds.get("SeriesInstanceUID", "")) or "<no SeriesInstanceUID>"
        info = series.get(uid)
        if info is None:
            info = series[uid] = SeriesInfo(
                series_instance_uid=uid,
                modality=str(ds.get("Modality", "")),
                study_instance_uid=str(ds.get("StudyInstanceUID", "")),
                patient_id=str(ds.get("PatientID", "")),
                series_description=str(ds.get("SeriesDescription", "")),
            )
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            # not an image slice (e.g. structured report in the same series): skip, but say so
            logger.warning("%s: no ImagePositionPatient/ImageOrientationPatient, skipped", path)
            continue
        info.slices.append(
            SliceHeader(
                path=path,
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                position=np.asarray([float(v) for v in ds.ImagePositionPatient]),
                orientation=np.asarray([float(v) for v in ds.ImageOrientationPatient]),
                instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None,
            )
        )
    return {k: v for k, v in series.items() if v.slices}


def choose_series(
    folder: str | Path, series: dict[str, SeriesInfo], series_uid: str | None = None, allow_non_ct: bool = False
) -> SeriesInfo:
    """Pick ``series_uid`` or else the CT series with most slices, warning about the others."""
    if not series:
        raise InputError(folder, "holds no DICOM image files")
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(folder, f"has no series with SeriesInstanceUID {series_uid}",
                             hint="found: " + ", ".join(sorted(series)))
        chosen = series[series_uid]
    else:
        candidates = [s for s in series.values() if s.modality == CT_MODALITY] or (
            list(series.values()) if allow_non_ct else []
        )
        if not candidates:
            mods = sorted({s.modality or "<none>" for s in series.values()})
            raise InputError(folder, f"holds no CT series (modalities: {', '.join(mods)})",
                             hint="pass force/allow_non_ct to read it anyway")
        chosen = max(candidates, key=lambda s: s.n_slices)
        others = [s for s in series.values() if s is not chosen]
        if others:
            listing = "; ".join(f"{s.series_instance_uid} ({s.modality}, {s.n_slices} slices)" for s in others)
            logger.warning("%s: %d series found, using %s (%d slices); others: %s", folder, len(series),
                           chosen.series_instance_uid, chosen.n_slices, listing)
    if chosen.modality != CT_MODALITY and not allow_non_ct:
        raise InputError(folder, f"series {chosen.series_instance_uid} has modality {chosen.modality or '<none>'}, "
                         "not CT", hint="pass force/allow_non_ct to read it anyway")
    return chosen


@dataclass
class SeriesCheck:
    """Result of :func:`check_series_geometry`."""

    positions: np.ndarray  # mm along the normal, ascending
    spacing: float  # median slice spacing, mm
    uniform: bool
    gantry_tilt_deg: float
    problems: list[str]


def check_series_geometry(folder: str | Path, info: SeriesInfo) -> SeriesCheck:
    """Check orientation consistency, duplicate positions, uniform spacing, missing slices and gantry tilt.

    Raises :class:`InputError` for inconsistent orientations and duplicated positions (never readable as one
    3D grid). Spacing and tilt problems are returned in ``problems`` for the caller to decide.
    """
    iops = np.stack([s.orientation for s in info.slices])
    if not np.allclose(iops, iops[0], atol=1e-4):
        raise InputError(folder, f"series {info.series_instance_uid} mixes slice orientations "
                         "(ImageOrientationPatient differs between files), e.g. a scout with the axial slices")
    ordered = info.sorted_slices()
    pos = np.array([float(np.dot(s.position, info.normal())) for s in ordered])
    problems: list[str] = []
    if len(pos) < 2:
        return SeriesCheck(pos, float("nan"), True, 0.0, problems)
    steps = np.diff(pos)
    if np.any(steps < 1e-3):
        dup = int(np.sum(steps < 1e-3))
        raise InputError(folder, f"series {info.series_instance_uid} has {dup} duplicated slice position(s)")
    median = float(np.median(steps))
    uniform = bool(np.all(np.abs(steps - median) <= SPACING_TOLERANCE * median))
    if not uniform:
        big = steps > (1 + SPACING_TOLERANCE) * median
        n_missing = int(np.sum(np.round(steps[big] / median) - 1))
        problems.append(
            f"non-uniform slice spacing: steps {steps.min():.3f}..{steps.max():.3f} mm, median {median:.3f} mm"
            + (f", about {n_missing} missing slice(s)" if n_missing > 0 else "")
        )
    # gantry tilt: slice-to-slice displacement not parallel to the slice normal
    disp = ordered[-1].position - ordered[0].position
    cosang = abs(float(np.dot(disp, info.normal()))) / max(float(np.linalg.norm(disp)), 1e-9)
    tilt = float(np.degrees(np.arccos(min(1.0, cosang))))
    if tilt > TILT_TOLERANCE_DEG:
        problems.append(f"gantry tilt of {tilt:.1f} degrees (slices are sheared)")
    return SeriesCheck(pos, median, uniform, tilt, problems)


def gdcm_sorted_files(folder: str | Path, info: SeriesInfo) -> list[str]:
    """File names of the series in GDCM's order (position along the normal), restricted to ``info``'s files."""
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), info.series_instance_uid)
    ours = {os.path.realpath(p) for p in info.files}
    names = [n for n in names if os.path.realpath(n) in ours]
    if len(names) != info.n_slices:  # GDCM skipped files (e.g. in subfolders): fall back to our ordering
        names = [s.path for s in info.sorted_slices()]
    return list(names)
