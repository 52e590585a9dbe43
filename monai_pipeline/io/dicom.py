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
#: objects filed beside image slices that are not slices themselves (every other file must be a valid slice)
NON_IMAGE_MODALITIES = ("SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "REG", "DOC", "FID")
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
    pixel_spacing: tuple[float, float] | None = None  # (row spacing, column spacing), mm
    size: tuple[int, int] | None = None  # (Rows, Columns)


def header_vector(ds, keyword: str, n: int, path: str) -> np.ndarray:
    """``n`` numbers of a DICOM attribute, or an :class:`InputError` that says what is wrong with it."""
    if keyword not in ds:
        raise InputError(path, f"has no {keyword}")
    try:
        raw = ds.get(keyword)
    except Exception as err:  # noqa: BLE001 - pydicom converts values on access and may refuse them
        raise InputError(path, f"{keyword} is not readable ({str(err).splitlines()[0][:80]})") from err
    values = list(raw) if hasattr(raw, "__iter__") and not isinstance(raw, str | bytes) else [raw]
    if raw is None or len(values) == 0 or (len(values) == 1 and str(values[0]).strip() == ""):
        raise InputError(path, f"{keyword} is empty")
    if len(values) != n:
        raise InputError(path, f"{keyword} must have {n} values, got {len(values)}")
    try:
        out = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as err:
        shown = "\\".join(map(str, values))[:60]
        raise InputError(path, f"{keyword} is not numeric ({shown!r})") from err
    if not np.all(np.isfinite(out)):
        raise InputError(path, f"{keyword} holds a non-finite value")
    return out


def check_orientation(iop: np.ndarray, path: str) -> None:
    """ImageOrientationPatient must be two orthogonal unit vectors (row and column directions)."""
    r, c = iop[:3], iop[3:]
    if not (abs(np.linalg.norm(r) - 1) < 1e-2 and abs(np.linalg.norm(c) - 1) < 1e-2 and abs(np.dot(r, c)) < 1e-2):
        raise InputError(path, f"ImageOrientationPatient is not two orthogonal unit vectors "
                         f"({', '.join(f'{v:g}' for v in iop)})")


def _optional_int(ds, keyword: str) -> int | None:
    v = ds.get(keyword)
    try:
        return int(v) if v is not None and str(v).strip() != "" else None
    except (TypeError, ValueError):
        return None


@dataclass
class SeriesInfo:
    """Header summary of one DICOM series (no pixel data, no patient identity)."""

    series_instance_uid: str
    modality: str
    slices: list[SliceHeader] = field(default_factory=list)
    study_instance_uid: str = ""
    patient_id: str = ""
    series_description: str = ""
    manufacturer: str = ""

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


#: SOP class of a DICOMDIR (Media Storage Directory Storage), the index a CD or PACS export puts beside the images
MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"


def is_media_directory(ds) -> bool:
    """Whether a dataset is a DICOMDIR (by its media storage SOP class, or its directory record sequence)."""
    meta = getattr(ds, "file_meta", None)
    sop = str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    return sop == MEDIA_DIRECTORY_SOP_CLASS or "DirectoryRecordSequence" in ds


def is_dicomdir_file(path: Path) -> bool:
    """Whether ``path`` is a DICOMDIR file (by its header: a media storage directory, whatever its name)."""
    if not path.is_file() or not _is_dicom_file(str(path)):
        return False
    try:
        return is_media_directory(pydicom.dcmread(str(path), stop_before_pixels=True))
    except Exception:  # noqa: BLE001 - unreadable: not a DICOMDIR (the reader refuses it later with its reason)
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
            logger.debug("%s: not a DICOM file (no DICM marker, no readable header): skipped", path)
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:  # noqa: BLE001
            raise InputError(path, f"unreadable DICOM header ({err.__class__.__name__}: {err})") from err
        meta = getattr(ds, "file_meta", None)
        if is_media_directory(ds):
            logger.debug("%s: a DICOMDIR (media storage directory), not an image: skipped", path)
            continue
        if getattr(ds, "preamble", None) is not None and (meta is None or "TransferSyntaxUID" not in meta):
            raise InputError(path, "damaged file meta information (no TransferSyntaxUID)")
        uid = str(ds.get("SeriesInstanceUID", "")) or "<no SeriesInstanceUID>"
        info = series.get(uid)
        if info is None:
            info = series[uid] = SeriesInfo(
                series_instance_uid=uid,
                modality=str(ds.get("Modality", "")),
                study_instance_uid=str(ds.get("StudyInstanceUID", "")),
                patient_id=str(ds.get("PatientID", "")),
                series_description=str(ds.get("SeriesDescription", "")),
                manufacturer=str(ds.get("Manufacturer", "")),
            )
        if str(ds.get("Modality", "")).upper() in NON_IMAGE_MODALITIES:
            # a report, presentation state, segmentation or structure set filed with the images: skip, say so
            logger.warning("%s: %s object, not an image slice: skipped", path, ds.get("Modality"))
            continue
        orientation = header_vector(ds, "ImageOrientationPatient", 6, path)
        check_orientation(orientation, path)
        spacing = header_vector(ds, "PixelSpacing", 2, path) if "PixelSpacing" in ds else None
        if spacing is not None and not np.all(spacing > 0):
            raise InputError(path, f"PixelSpacing must be positive, got {spacing.tolist()}")
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            if keyword in ds:
                value = float(header_vector(ds, keyword, 1, path)[0])
                if keyword == "RescaleSlope" and value == 0:
                    raise InputError(path, "RescaleSlope is 0 (every voxel would be the intercept)")
        for keyword, allowed in (("BitsAllocated", (8, 16, 32)), ("PixelRepresentation", (0, 1)),
                                 ("SamplesPerPixel", (1,))):
            if keyword in ds and _optional_int(ds, keyword) not in allowed:
                raise InputError(path, f"{keyword} must be one of {allowed}, got {str(ds.get(keyword))[:20]!r}")
        rows, cols = _optional_int(ds, "Rows"), _optional_int(ds, "Columns")
        if not rows or not cols or rows < 1 or cols < 1:
            raise InputError(path, f"Rows/Columns missing or not positive ({ds.get('Rows')!r} x {ds.get('Columns')!r})")
        info.slices.append(
            SliceHeader(
                path=path,
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                position=header_vector(ds, "ImagePositionPatient", 3, path),
                orientation=orientation,
                instance_number=_optional_int(ds, "InstanceNumber"),
                pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
                size=(rows, cols),
            )
        )
    return {k: v for k, v in series.items() if v.slices}


def dicom_subfolders(folder: Path, max_depth: int = 4, limit: int = 5) -> list[tuple[str, int]]:
    """Subfolders (relative paths) under ``folder`` that hold DICOM files directly, with their file counts."""
    found = []
    base_depth = len(folder.parts)
    for root, dirs, names in os.walk(folder):
        depth = len(Path(root).parts) - base_depth
        if depth >= max_depth:
            dirs[:] = []
        if depth == 0:
            continue
        n = sum(1 for name in names[:50] if _is_dicom_file(os.path.join(root, name)))
        if n:
            found.append((os.path.relpath(root, folder), len(names)))
            if len(found) >= limit:
                break
    return found


def choose_series(
    folder: str | Path, series: dict[str, SeriesInfo], series_uid: str | None = None, allow_non_ct: bool = False
) -> SeriesInfo:
    """Pick ``series_uid`` or else the CT series with most slices, warning about the others."""
    if not series:
        subs = dicom_subfolders(Path(folder))
        if subs:
            where = ", ".join(f"{d} ({n} files)" for d, n in subs)
            raise InputError(folder, f"holds no DICOM image files itself; DICOM files are in subfolder(s): {where}",
                             hint="pass the series folder, or --recursive for every series under it")
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
    sizes = sorted({s.size for s in info.slices if s.size is not None})
    if len(sizes) > 1:
        raise InputError(folder, f"series {info.series_instance_uid} mixes slice sizes (Rows x Columns "
                         f"{', '.join(f'{r}x{c}' for r, c in sizes[:4])})")
    spacings = sorted({s.pixel_spacing for s in info.slices if s.pixel_spacing is not None})
    if len(spacings) > 1 and not np.allclose(spacings, spacings[0], rtol=1e-3, atol=1e-4):
        raise InputError(folder, f"series {info.series_instance_uid}: PixelSpacing differs between slices "
                         f"({', '.join(f'{a:g}x{b:g}' for a, b in spacings[:4])} mm)")
    if any(s.pixel_spacing is None for s in info.slices) and spacings:
        raise InputError(folder, f"series {info.series_instance_uid}: PixelSpacing is missing in some slices")
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
    try:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), info.series_instance_uid)
    except RuntimeError as err:
        raise InputError(folder, "GDCM cannot parse the series' headers (a damaged attribute)") from err
    ours = {os.path.realpath(p) for p in info.files}
    names = [n for n in names if os.path.realpath(n) in ours]
    if len(names) != info.n_slices:  # GDCM skipped files (e.g. in subfolders): fall back to our ordering
        names = [s.path for s in info.sorted_slices()]
    return list(names)
