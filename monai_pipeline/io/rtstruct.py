"""DICOM RT Structure Sets, both ways: a lesion label map written as an RTSTRUCT (one ROI per lesion, closed
planar contours on the source CT's slices), and an RTSTRUCT's ROIs read back as a mask on its source series' grid.

Writing: each lesion's mask on each slice of the source series is outlined with marching squares at the 0.5
level (``contourpy``, matplotlib's contouring library) on the slice padded with background, so every outline is
closed and passes half-way between a lesion pixel centre and a background one. Reading: a pixel is inside an ROI
on a slice when its centre lies inside an odd number of that ROI's contours there (even-odd rule: a contour
inside another is a hole), so the outlines written here read back as the same pixels.

Contour points are patient coordinates (mm, LPS) as the standard defines them; a contour must be
``CLOSED_PLANAR`` and lie on a slice plane of the series it is read onto (within a tenth of the slice step),
otherwise the reading stops with one line naming the ROI and the contour. An empty prediction is written as one
ROI, "Nodule", without contours (the standard needs one ROI at least).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import contourpy
import numpy as np
import pydicom
from matplotlib.path import Path as MplPath
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from monai_pipeline import __version__
from monai_pipeline.errors import InputError
from monai_pipeline.io.geometry import Geometry
from monai_pipeline.io.source import RTSTRUCT_STORAGE, SourceSeries
from monai_pipeline.io.writer import atomic_path

#: DICOM copies these from the source series into a derived object (same patient and study in any viewer)
PATIENT_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                          "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
#: tolerance, in slices, for a contour to count as lying on a slice plane
PLANE_TOLERANCE = 0.1
COLOURS = [(255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 200, 0), (200, 64, 255), (0, 220, 220)]


def slice_outlines(slice_mask_xy: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (each (N, 2), continuous pixel indices (x, y), first point repeated last) of the
    foreground of one slice ``slice_mask_xy`` ((x, y) boolean), holes included as separate outlines."""
    padded = np.pad(np.asarray(slice_mask_xy, dtype=np.float64), 1)
    lines = contourpy.contour_generator(z=padded.T, line_type="Separate").lines(0.5)  # z[y, x]: points are (x, y)
    return [np.asarray(line) - 1.0 for line in lines if len(line) >= 4]


def fill_outlines(outlines: Sequence[np.ndarray], shape_xy: tuple[int, int]) -> np.ndarray:
    """Boolean (x, y) mask of the pixels whose centres lie inside an odd number of ``outlines`` ((N, 2) continuous
    pixel indices (x, y), closed)."""
    out = np.zeros(shape_xy, dtype=bool)
    for pts in outlines:
        pts = np.asarray(pts, dtype=np.float64)
        if not np.array_equal(pts[0], pts[-1]):
            pts = np.vstack([pts, pts[:1]])  # matplotlib's closed path ignores its last vertex: repeat the first
        lo = np.maximum(np.floor(pts.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(pts.max(axis=0)).astype(int), np.asarray(shape_xy) - 1)
        if np.any(hi < lo):
            continue
        xs, ys = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
        inside = MplPath(pts, closed=True).contains_points(np.stack([xs.ravel(), ys.ravel()], axis=1))
        out[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1] ^= inside.reshape(xs.shape)
    return out


def _referenced_image(sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def _header(first: Dataset, series_uid: str, description: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("rtstruct", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_STORAGE, meta.MediaStorageSOPInstanceUID
    for kw in PATIENT_STUDY_KEYWORDS:
        setattr(ds, kw, first.get(kw, ""))
    now = datetime.datetime.now()
    ds.InstanceCreationDate = ds.StructureSetDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.StructureSetTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, 9002, 1
    ds.SeriesDescription = description[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = "monai-pipeline"
    ds.ManufacturerModelName = "monai-pipeline lung nodule segmentation"
    ds.SoftwareVersions = __version__
    ds.StructureSetLabel = "Nodules"
    ds.StructureSetName = "monai-pipeline"
    return ds


def write_rtstruct(labels_xyz: np.ndarray, geometry: Geometry, slice_files: Sequence[str], path: str | Path,
                   names: Sequence[str] | None = None, provenance: dict | None = None) -> Path:
    """Write the lesion label map ``labels_xyz`` ((x, y, z) on ``geometry``, the source series' grid whose third
    axis follows ``slice_files``; value k = lesion k) as an RTSTRUCT at ``path``, atomically: ROI k named
    ``names[k - 1]`` (default "Nodule k"), one closed planar contour per outline per slice."""
    labels = np.asarray(labels_xyz)
    if labels.shape[2] != len(slice_files):
        raise InputError(path, f"mask has {labels.shape[2]} slices, the source series {len(slice_files)}")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in slice_files]
    first = sources[0]
    sha = (provenance or {}).get("model_sha256", "")
    ds = _header(first, generate_uid(), f"monai-pipeline nodules{f' (model {sha[:12]})' if sha else ''}")
    frame_uid = first.FrameOfReferenceUID
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence([_referenced_image(s.SOPInstanceUID) for s in sources])
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, as the standard asks
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])
    n = int(labels.max()) if labels.size else 0
    names = list(names) if names is not None else [f"Nodule {k}" for k in range(1, n + 1)]
    if n == 0:  # the standard needs one ROI at least: an empty prediction gets one "Nodule" ROI without contours
        names = ["Nodule"]
    rois, contours, observations = [], [], []
    boxes = ndimage.find_objects(labels.astype(np.int32, copy=False)) if n else []  # each lesion's bounding box
    for k in range(1, max(n, 1) + 1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = k, frame_uid, names[k - 1][:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)
        box = boxes[k - 1] if k - 1 < len(boxes) and boxes[k - 1] is not None else None
        contours.append(_roi_contours(labels[box] == k if box else None, box, geometry, sources, k))
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = k, k
        obs.RTROIInterpretedType, obs.ROIInterpreter = "", ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    with atomic_path(path) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return Path(path)


def _roi_contours(mask: np.ndarray | None, box: tuple[slice, ...] | None, geometry: Geometry,
                  sources: list[Dataset], number: int) -> Dataset:
    """ROI ``number``'s contours from ``mask``, its voxels inside ``box`` (slices of the (x, y, z) grid)."""
    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = list(COLOURS[(number - 1) % len(COLOURS)])
    seq = []
    x0, y0, z0 = (s.start for s in box) if box else (0, 0, 0)
    for dz in np.flatnonzero(mask.any(axis=(0, 1))) if mask is not None else []:
        z = z0 + int(dz)
        for outline in slice_outlines(mask[:, :, dz]):
            idx = np.column_stack([outline[:-1] + [x0, y0], np.full(len(outline) - 1, float(z))])
            pts = geometry.index_to_lps(idx)
            c = Dataset()
            c.ContourImageSequence = DicomSequence([_referenced_image(sources[z].SOPInstanceUID)])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.4f}" for v in pts.ravel()]
            seq.append(c)
    if seq:  # Type 3: an ROI without contours (an empty prediction) leaves it out
        item.ContourSequence = DicomSequence(seq)
    return item


def _roi_numbers(ds: Dataset, path: Path, roi: str | int | None) -> dict[int, str]:
    """The ROI numbers to read, with their names: all, or the one named or numbered ``roi``."""
    rois = {int(r.ROINumber): str(r.get("ROIName", "")) for r in ds.get("StructureSetROISequence", [])}
    if not rois:
        raise InputError(path, "RTSTRUCT has no ROIs")
    if roi is None:
        return rois
    for number, name in rois.items():
        if str(roi) == name or str(roi) == str(number):
            return {number: name}
    listed = ", ".join(f"{n} '{v}'" for n, v in rois.items())
    raise InputError(path, f"has no ROI named or numbered {roi!r} (ROIs: {listed})")


def check_references(ds: Dataset, path: Path, src: SourceSeries) -> None:
    """The structure set is on ``src``'s frame of reference and, where it names series, on ``src``'s series."""
    frames = list(ds.get("ReferencedFrameOfReferenceSequence", []))
    uids = {str(f.FrameOfReferenceUID) for f in frames if "FrameOfReferenceUID" in f}
    uids |= {str(r.ReferencedFrameOfReferenceUID) for r in ds.get("StructureSetROISequence", [])
             if "ReferencedFrameOfReferenceUID" in r}
    if uids and src.frame_of_reference_uid not in uids:
        raise InputError(path, f"is on frame of reference {sorted(uids)[0]}, the image series {src.path} on "
                               f"{src.frame_of_reference_uid}")
    series = {str(s.SeriesInstanceUID) for f in frames for st in f.get("RTReferencedStudySequence", [])
              for s in st.get("RTReferencedSeriesSequence", [])}
    if series and src.series_uid not in series:
        raise InputError(path, f"references series {sorted(series)[0]}, not the image series {src.series_uid}")


def read_rtstruct(path: str | Path, src: SourceSeries, roi: str | int | None = None) -> np.ndarray:
    """The ROIs of the RTSTRUCT at ``path`` (all, or the one named or numbered ``roi``) as one uint8 mask
    ((x, y, z), 1 inside) on ``src``'s grid."""
    path = Path(path)
    ds = pydicom.dcmread(str(path))
    check_references(ds, path, src)
    wanted = _roi_numbers(ds, path, roi)
    size = src.geometry.size
    out = np.zeros(size, dtype=np.uint8)
    known = set(src.sop_uids)
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        if number not in wanted:
            continue
        by_slice: dict[int, list[np.ndarray]] = {}
        for j, c in enumerate(item.get("ContourSequence", []), start=1):
            where = f"ROI {number} '{wanted[number]}', contour {j}"
            kind = str(c.get("ContourGeometricType", ""))
            if kind != "CLOSED_PLANAR":
                raise InputError(path, f"{where} is {kind or 'untyped'}, not a closed outline (CLOSED_PLANAR)")
            for ref in c.get("ContourImageSequence", []):
                if str(ref.ReferencedSOPInstanceUID) not in known:
                    raise InputError(path, f"{where} references slice {ref.ReferencedSOPInstanceUID}, which is not "
                                           f"in the image series {src.path}")
            pts = np.asarray([float(v) for v in c.ContourData], dtype=np.float64).reshape(-1, 3)
            if len(pts) < 3:
                raise InputError(path, f"{where} has {len(pts)} point(s): no area")
            idx = src.geometry.lps_to_index(pts)
            z = float(np.median(idx[:, 2]))
            k = int(round(z))
            if np.abs(idx[:, 2] - k).max() > PLANE_TOLERANCE or not 0 <= k < size[2]:
                raise InputError(path, f"{where} does not lie on a slice of the image series (slice index "
                                       f"{z:.2f} of 0..{size[2] - 1})")
            by_slice.setdefault(k, []).append(idx[:, :2])
        for k, outlines in by_slice.items():
            out[:, :, k] |= fill_outlines(outlines, (size[0], size[1])).astype(np.uint8)
    return out
