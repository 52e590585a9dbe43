"""Reading CT volumes with SimpleITK, and a MONAI ``ImageReader`` around it.

:func:`read_ct` is the single entry point: NIfTI (.nii, .nii.gz), NRRD, MHA/MHD, a single DICOM file or a
DICOM series folder in, a 3D ``sitk.Image`` in Hounsfield units out. :class:`SimpleITKReader` plugs the same
function into ``monai.transforms.LoadImage``/``LoadImaged`` so that every MONAI transform downstream sees a
correct RAS ``affine``, ``original_affine`` and ``spatial_shape`` (array axis order x, y, z).
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from monai_pipeline.errors import InputError
from monai_pipeline.io import dicom
from monai_pipeline.io.geometry import Geometry, sitk_to_xyz_array
from monai_pipeline.io.paths import check_input
from monai_pipeline.io.writer import SYNTHETIC_MARK

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
NONUNIFORM_CHOICES = ("error", "resample")
CONTENTS = ("ct", "label")
#: a CT in Hounsfield units has air (about -1000 HU) somewhere and nothing beyond these bounds
HU_AIR_MAX, HU_MIN, HU_MAX = -200.0, -10000.0, 40000.0


@dataclass
class ReadOptions:
    """How to treat awkward inputs.

    series_uid: SeriesInstanceUID to read from a folder holding several series (default: CT with most slices).
    allow_non_ct: read a series whose Modality is not CT (default: refuse).
    nonuniform: ``"error"`` (default) or ``"resample"`` (warn and interpolate to the median slice spacing)
        for series with non-uniform spacing or missing slices.
    allow_gantry_tilt: read a tilted series anyway (warn; the grid is then only approximately right).
    content: ``"ct"`` (default: values must look like Hounsfield units, unless ``allow_non_ct``) or ``"label"``
        (non-negative integer values up to 255).
    """

    series_uid: str | None = None
    allow_non_ct: bool = False
    nonuniform: str = "error"
    allow_gantry_tilt: bool = False
    content: str = "ct"

    def __post_init__(self):
        if self.nonuniform not in NONUNIFORM_CHOICES:
            raise ValueError(f"nonuniform must be one of {NONUNIFORM_CHOICES}, got {self.nonuniform!r}")
        if self.content not in CONTENTS:
            raise ValueError(f"content must be one of {CONTENTS}, got {self.content!r}")


@dataclass
class CTVolume:
    """A CT volume in HU plus where it came from (no patient identity)."""

    image: sitk.Image
    source: str
    series_instance_uid: str = ""
    notes: list[str] = field(default_factory=list)
    #: DICOM series: the slice headers in the order of the image's third axis (None when slices were
    #: interpolated, or for non-DICOM input)
    slices: list[dicom.SliceHeader] | None = None
    #: a non-uniform DICOM series read with ``nonuniform="resample"``: its original slice headers in position
    #: order, and where each lies on the uniform grid (fractional index along the third axis)
    source_slices: list[dicom.SliceHeader] | None = None
    source_slice_index: np.ndarray | None = None
    #: a phantom written by ``monai-pipeline synth`` (NIfTI ``descrip`` or DICOM ``Manufacturer`` starting with
    #: :data:`SYNTHETIC_MARK`); any other input counts as a real scan
    synthetic: bool = False

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_sitk(self.image)


def _marked_synthetic(text: str) -> bool:
    return str(text).strip().startswith(SYNTHETIC_MARK)


def is_image_path(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() or str(p).lower().endswith(IMAGE_SUFFIXES)


def read_ct(path: str | Path, options: ReadOptions | None = None) -> CTVolume:
    """Read a CT volume (HU, 3D) from an image file, a single DICOM file or a DICOM series folder.

    Raises :class:`InputError` naming ``path`` for anything that cannot be read as one 3D CT grid.
    """

    options = options or ReadOptions()
    p = check_input(path)
    if p.is_dir():
        vol = _read_dicom_folder(p, options)
    elif p.suffix.lower() == ".dcm" or _looks_like_dicom(p):
        vol = _read_dicom_file(p, options)
    elif not str(p).lower().endswith(IMAGE_SUFFIXES):
        raise InputError(p, "unsupported file type", hint="expected .nii, .nii.gz, .nrrd, .mha, .mhd, .dcm "
                         "or a DICOM folder")
    else:
        vol = _read_image_file(p)
    check_voxels(vol, options)
    return vol


def read_label(path: str | Path) -> CTVolume:
    """A label or mask file: same readers, but values must be non-negative integers up to 255 (no HU check)."""
    return read_ct(path, ReadOptions(allow_non_ct=True, content="label"))


def _read_image_file(p: Path) -> CTVolume:
    nifti = str(p).lower().endswith((".nii", ".nii.gz"))
    affine = check_nifti_complete(p) if nifti else None
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as err:
        raise InputError(p, f"not a readable image ({_first_line(err)})") from err
    _require_3d(p, image)
    if affine is not None:
        _apply_nifti_rule(p, image, affine)
    synthetic = image.HasMetaDataKey("descrip") and _marked_synthetic(image.GetMetaData("descrip"))
    return CTVolume(image=image, source=str(p), synthetic=synthetic)


def _apply_nifti_rule(p: Path, image: sitk.Image, affine: np.ndarray) -> None:
    """Follow nibabel's rule for the geometry (sform when its code is > 0, else qform): when SimpleITK read
    another one (the two forms disagree), stamp nibabel's on the image, or refuse what ITK cannot represent."""
    ours = Geometry.from_sitk(image).ras_affine()
    if np.allclose(ours, affine, atol=1e-3):
        return
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    cols = affine[:3, :3] / np.where(spacing > 0, spacing, 1)
    if np.any(spacing <= 0) or not np.allclose(cols.T @ cols, np.eye(3), atol=1e-4):
        raise InputError(p, "its sform has sheared or zero-length axes (not a voxel grid SimpleITK can represent)")
    logger.warning("%s: the NIfTI qform and sform disagree; using the sform (nibabel's rule: sform when "
                   "sform_code > 0)", p)
    Geometry.from_ras_affine(affine, image.GetSize()).apply(image)


def check_voxels(vol: CTVolume, options: ReadOptions) -> None:
    """Refuse NaN/Inf voxels; a CT must look like Hounsfield units (air present, values in range) unless
    ``allow_non_ct``; a label must hold non-negative integers up to 255."""
    image, src = vol.image, vol.source
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(image)
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputError(src, f"{bad} voxel(s) are NaN or infinite")
        if options.content == "label" and not np.all(np.mod(arr, 1) == 0):
            raise InputError(src, "is a float image with non-integer values, not a label map")
    mm = sitk.MinimumMaximumImageFilter()
    mm.Execute(image)
    lo, hi = mm.GetMinimum(), mm.GetMaximum()
    if options.content == "label":
        if lo < 0 or hi > 255:
            raise InputError(src, f"label values must lie in 0..255, got {lo:g}..{hi:g}")
        return
    if options.allow_non_ct:
        return
    if lo < HU_MIN or hi > HU_MAX:
        raise InputError(src, f"values {lo:g}..{hi:g} lie outside the CT range ({HU_MIN:g}..{HU_MAX:g} HU)",
                         hint="not a CT in Hounsfield units? pass --force to read it anyway")
    if lo > HU_AIR_MAX:
        raise InputError(src, f"no voxel at or below {HU_AIR_MAX:g} HU (values {lo:g}..{hi:g}): no air, so not a "
                         "CT in Hounsfield units as far as we can tell", hint="pass --force to read it anyway")


def label_values(image: sitk.Image) -> list[int]:
    """The distinct values of a label image (read with :func:`read_label`), ascending."""
    arr = sitk.GetArrayViewFromImage(image)
    counts = np.bincount(np.asarray(arr, dtype=np.uint8).ravel(), minlength=1)
    return [int(v) for v in np.flatnonzero(counts)]


def check_nifti_complete(p: Path) -> np.ndarray | None:
    """Refuse truncated NIfTI files (SimpleITK fills a truncated ``.nii.gz`` with zeros without a word);
    returns nibabel's voxel-to-RAS affine when the header has a qform or sform code > 0 (else None).

    The header (nibabel) gives the expected byte count; for gzip files the trailer's ISIZE must match it
    (mod 2**32), and only if it does not (e.g. a multi-member gzip) is the stream decompressed and counted.
    """

    problems = nifti_header_problems(p)
    if problems:
        raise InputError(p, f"damaged NIfTI header: {problems[0]}")
    try:
        img = nib.load(str(p))
        hdr = img.header
        # dataobj.offset is where nibabel really reads (vox_offset may be 0 in single-file headers)
        expected = int(img.dataobj.offset) + int(np.prod(hdr.get_data_shape())) * hdr.get_data_dtype().itemsize
        coded = int(hdr["sform_code"]) > 0 or int(hdr["qform_code"]) > 0
        affine = np.asarray(img.affine, dtype=np.float64) if coded else None
    except Exception as err:  # noqa: BLE001 - nibabel raises many kinds for a damaged header
        raise InputError(p, f"not a readable NIfTI file ({_first_line(err)})") from err
    if affine is not None and not np.all(np.isfinite(affine)):
        raise InputError(p, "its qform/sform holds non-finite values")
    if not str(p).lower().endswith(".gz"):
        size = p.stat().st_size
        if size < expected:
            raise InputError(p, f"truncated: {size} of {expected} bytes")
        _check_finite_nifti(p, img)
        return affine
    with open(p, "rb") as fh:
        fh.seek(-4, 2)
        isize = struct.unpack("<I", fh.read(4))[0]
    if isize == expected % 2 ** 32:
        _check_finite_nifti(p, img)
        return affine
    total = 0
    try:
        with gzip.open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as err:
        raise InputError(p, f"truncated or damaged gzip stream after {total} of {expected} bytes") from err
    if total < expected:
        raise InputError(p, f"truncated: {total} of {expected} bytes")
    _check_finite_nifti(p, img)
    return affine


def nifti_header_problems(p: Path) -> list[str]:
    """What nibabel's diagnosis finds wrong in the raw header block (nibabel itself would silently repair it
    on load, and SimpleITK may read the file another way: either could be garbage, so we refuse)."""

    opener = gzip.open if str(p).lower().endswith(".gz") else open
    try:
        with opener(p, "rb") as fh:
            raw = fh.read(540)
    except (OSError, EOFError) as err:
        return [f"header not readable ({err.__class__.__name__})"]
    if len(raw) < 348:
        return [f"file too short for a NIfTI header ({len(raw)} bytes)"]
    size = struct.unpack("<i", raw[:4])[0]
    size_be = struct.unpack(">i", raw[:4])[0]
    cls = nib.Nifti2Header if 540 in (size, size_be) else nib.Nifti1Header
    block = raw[:cls.template_dtype.itemsize]
    if len(block) < cls.template_dtype.itemsize:
        return ["file too short for its header"]
    report = [ln.strip() for ln in cls.diagnose_binaryblock(block).splitlines() if ln.strip()]
    hdr = cls(binaryblock=block, check=False)
    minimum = cls.template_dtype.itemsize + 4  # single file: the data follow the header and its extension flag
    dims = [int(v) for v in hdr["dim"]]
    if not 1 <= dims[0] <= 7:
        report.append(f"dim[0] (number of dimensions) must be 1..7, got {dims[0]}")
    elif any(d < 1 for d in dims[1:dims[0] + 1]):
        report.append(f"dimensions must be positive, got {dims[1:dims[0] + 1]}")
    if float(hdr["vox_offset"]) < minimum:
        report.append(f"vox_offset {float(hdr['vox_offset']):g} lies inside the header (at least {minimum} in a "
                      "single-file NIfTI)")
    return report


def _check_finite_nifti(p: Path, img) -> None:
    """SimpleITK turns NaN/Inf voxels of a NIfTI file into 0 without a word: count them with nibabel first
    (float files, or a non-finite scale slope, only; integer voxels cannot be NaN)."""
    hdr = img.header
    slope = hdr["scl_slope"]
    if hdr.get_data_dtype().kind != "f" and (slope is None or np.isnan(slope) or np.isfinite(slope)):
        return
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - damaged data: reported as such
        raise InputError(p, f"voxel data not readable ({_first_line(err)})") from err
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise InputError(p, f"{bad} voxel(s) are NaN or infinite")


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "rror" in ln or "annot" in ln or "nable" in ln]
    return (useful or lines or [err.__class__.__name__])[-1][:200]


def _looks_like_dicom(p: Path) -> bool:
    return p.is_file() and dicom._is_dicom_file(str(p)) and not str(p).lower().endswith(IMAGE_SUFFIXES[:-1])


def _require_3d(p: Path, image: sitk.Image) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(p, f"must be a single-channel 3D image, got {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s)")


def _read_dicom_file(p: Path, options: ReadOptions) -> CTVolume:

    try:
        ds = pydicom.dcmread(str(p), defer_size="1 KB")  # header read once; pixel data left on disk
    except Exception as err:  # noqa: BLE001
        raise InputError(p, f"unreadable DICOM header ({err.__class__.__name__})") from err
    if "Rows" not in ds or "SOPClassUID" not in ds:
        raise InputError(p, "is not a DICOM image file (no SOPClassUID/Rows: damaged or not an image)")
    placed = "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds
    if placed:
        dicom.check_orientation(dicom.header_vector(ds, "ImageOrientationPatient", 6, str(p)), str(p))
        dicom.header_vector(ds, "ImagePositionPatient", 3, str(p))
    elif not options.allow_non_ct:
        raise InputError(p, "has no ImagePositionPatient/ImageOrientationPatient: where it lies in the patient is "
                         "unknown", hint="pass --force to read it with origin 0 and identity direction")
    modality = str(ds.get("Modality", ""))
    if modality != dicom.CT_MODALITY and not options.allow_non_ct:
        raise InputError(p, f"modality is {modality or '<none>'}, not CT", hint="pass allow_non_ct/--force")
    if "PixelData" not in ds:
        raise InputError(p, "has no pixel data")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as err:
        raise InputError(p, f"pixel data not readable ({_first_line(err)})") from err
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    _require_3d(p, image)
    if image.GetSize()[2] == 1 and ds.get("SliceThickness"):
        sp = list(image.GetSpacing())
        sp[2] = float(ds.SliceThickness)
        image.SetSpacing(sp)
    return CTVolume(image=image, source=str(p), series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                    synthetic=_marked_synthetic(ds.get("Manufacturer", "")))


def _read_dicom_folder(folder: Path, options: ReadOptions) -> CTVolume:
    series = dicom.scan_folder(folder)
    info = dicom.choose_series(folder, series, options.series_uid, options.allow_non_ct)
    check = dicom.check_series_geometry(folder, info)
    notes: list[str] = []
    tilt = [m for m in check.problems if m.startswith("gantry tilt")]
    spacing_problems = [m for m in check.problems if not m.startswith("gantry tilt")]
    if tilt:
        if not options.allow_gantry_tilt:
            raise InputError(folder, tilt[0], hint="pass allow_gantry_tilt to read it anyway")
        logger.warning("%s: %s; read anyway", folder, tilt[0])
        notes.extend(tilt)
    if spacing_problems:
        if options.nonuniform == "error":
            raise InputError(folder, spacing_problems[0], hint="pass nonuniform='resample' to interpolate")
        logger.warning("%s: %s; resampling to %.3f mm", folder, spacing_problems[0], check.spacing)
        notes.extend(spacing_problems)
        image, source_index = _read_resampled(folder, info, check)
        source_slices = info.sorted_slices()
    else:
        source_slices, source_index = None, None
        files = dicom.gdcm_sorted_files(folder, info)
        by_path = {os.path.realpath(sl.path): sl for sl in info.slices}
        slices = [by_path[os.path.realpath(f)] for f in files]
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            image = reader.Execute()
        except RuntimeError as err:
            raise InputError(folder, f"pixel data not readable ({_first_line(err)})") from err
        if image.GetDimension() == 2:
            image = sitk.JoinSeries(image)
    _require_3d(folder, image)
    return CTVolume(image=image, source=str(folder), series_instance_uid=info.series_instance_uid, notes=notes,
                    slices=None if spacing_problems else slices, source_slices=source_slices,
                    source_slice_index=source_index, synthetic=_marked_synthetic(info.manufacturer))


def _read_resampled(folder: Path, info: dicom.SeriesInfo, check: dicom.SeriesCheck) -> tuple[sitk.Image, np.ndarray]:
    """Read slices one by one (HU) and interpolate linearly along the normal to uniform spacing (the median
    step, mm). Returns the image and each original slice's fractional index on the new grid (position order)."""
    ordered = info.sorted_slices()
    slices = [sitk.ReadImage(s.path, sitk.sitkFloat32) for s in ordered]
    stack = np.stack([sitk.GetArrayFromImage(s).reshape(s.GetSize()[1], s.GetSize()[0]) for s in slices])
    pos = check.positions
    n_new = int(round((pos[-1] - pos[0]) / check.spacing)) + 1
    new_pos = pos[0] + np.arange(n_new) * check.spacing
    hi = np.clip(np.searchsorted(pos, new_pos, side="left"), 1, len(pos) - 1)
    lo = hi - 1
    w = ((new_pos - pos[lo]) / (pos[hi] - pos[lo])).clip(0, 1).astype(np.float32)[:, None, None]
    vol = stack[lo] * (1 - w) + stack[hi] * w  # (z, y, x)
    image = sitk.GetImageFromArray(vol.astype(np.float32))
    iop = ordered[0].orientation
    direction = np.stack([iop[:3], iop[3:], np.cross(iop[:3], iop[3:])], axis=1)
    px = slices[0].GetSpacing()
    image.SetSpacing((px[0], px[1], check.spacing))
    image.SetOrigin(tuple(ordered[0].position))
    image.SetDirection(tuple(direction.reshape(-1)))
    return image, (pos - pos[0]) / check.spacing


def volume_meta(volume: CTVolume) -> dict[str, Any]:
    """MONAI metadata for a volume: RAS affines, spatial shape (x, y, z), spacing (mm) and the LPS geometry."""
    geom = volume.geometry
    affine = geom.ras_affine()
    return {
        MetaKeys.ORIGINAL_AFFINE: affine,
        MetaKeys.AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(geom.size),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        "spacing": np.asarray(geom.spacing),
        "source_geometry": geom.to_dict(),
        "series_instance_uid": volume.series_instance_uid,
        "synthetic": volume.synthetic,
        "filename_or_obj": volume.source,
    }


class SimpleITKReader(ImageReader):
    """MONAI ``ImageReader`` backed by :func:`read_ct`.

    Use as ``LoadImaged(keys, reader=SimpleITKReader())``. The data array is in (x, y, z) index order and
    ``affine`` maps (i, j, k) to RAS millimetres, as MONAI's own ``ITKReader`` does. ``dtype`` is the array's
    dtype (default float32: HU).
    """

    def __init__(self, options: ReadOptions | None = None, dtype: Any = np.float32, **kwargs: Any):
        super().__init__()
        if kwargs:
            options = ReadOptions(**kwargs) if options is None else options
        self.options = options or ReadOptions()
        self.dtype = dtype

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        return all(is_image_path(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> CTVolume | list[CTVolume]:
        vols = [read_ct(f, self.options) for f in ensure_tuple(data)]
        return vols if len(vols) > 1 else vols[0]

    def get_data(self, img: CTVolume | Sequence[CTVolume]) -> tuple[np.ndarray, dict]:
        vols = list(ensure_tuple(img))
        arrays = [sitk_to_xyz_array(v.image).astype(self.dtype, copy=False) for v in vols]
        meta = volume_meta(vols[0])
        if len(arrays) == 1:
            return arrays[0], meta
        for v in vols[1:]:
            if not v.geometry.matches(vols[0].geometry):
                raise InputError(v.source, f"geometry differs from {vols[0].source}")
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays), meta
