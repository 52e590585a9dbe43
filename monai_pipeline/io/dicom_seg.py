"""DICOM Segmentation objects (highdicom), both ways: a mask or lesion label map written as a SEG that references
its source CT series, and a SEG's segments read back as a mask on its source series' grid.

Writing: the SEG shares the source's frame of reference and patient/study attributes (viewers file it under the
same study), references the source SOP instance of every frame, codes its segments as "Nodule" (SNOMED CT:
category morphologically abnormal structure, type nodule), and identifies the algorithm by name, version and the
model file's SHA-256. By default one segment holds every lesion; ``per_lesion`` gives one segment per lesion,
numbered as the rows of ``lesions.csv`` (segment k = lesion k, labelled "Nodule k", its volume in mm3 in the
segment description). An empty prediction still gives a valid SEG: the standard needs at least one
segment and one frame, so it holds one empty "Nodule" segment and all frames (highdicom's behaviour).

Reading: frames are matched to the source series by the SOP Instance UIDs they reference (highdicom's
``get_pixels_by_source_instance``), never by position alone; a SEG on another frame of reference or series, or
one whose frames reference slices the series does not have, is refused with one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from monai_pipeline import __version__
from monai_pipeline.errors import InputError
from monai_pipeline.io.source import SourceSeries
from monai_pipeline.io.writer import atomic_path


def write_dicom_seg(labels_xyz: np.ndarray, slice_files: Sequence[str], path: str | Path,
                    provenance: dict | None = None, per_lesion: bool = False,
                    volumes_mm3: dict[int, float] | None = None) -> Path:
    """Write ``labels_xyz`` ((x, y, z) on the series' grid, third axis in the order of ``slice_files``; a binary
    mask, or a lesion label map with value k for lesion k) as a binary DICOM SEG at ``path``, atomically.

    ``per_lesion``: False puts every non-zero voxel in one segment; True makes segment k of the voxels of value k,
    described with ``volumes_mm3[k]`` when given."""
    import highdicom as hd  # an optional extra (monai-pipeline[dicom]): imported when a SEG is written
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels_xyz)
    if labels.shape[2] != len(slice_files):
        raise InputError(path, f"mask has {labels.shape[2]} slices, the source series {len(slice_files)}")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in slice_files]
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (slices, rows = y, columns = x)
    n = int(frames.max()) if per_lesion and frames.size else 0
    if n == 0:
        frames = (frames > 0).astype(np.uint8)
    sha = (provenance or {}).get("model_sha256", "")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="monai-pipeline", version=__version__, family=codes.DCM.ArtificialIntelligence,
        parameters={"model_sha256": sha} if sha else None)

    def describe(k: int, label: str) -> hd.seg.SegmentDescription:
        desc = hd.seg.SegmentDescription(
            segment_number=k, segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        if volumes_mm3 and k in volumes_mm3 and n:
            desc.SegmentDescription = f"lesion {k} of lesions.csv, {volumes_mm3[k]:.1f} mm3"[:64]
        return desc

    descriptions = [describe(k, f"Nodule {k}") for k in range(1, n + 1)] if n else [describe(1, "Nodule")]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames.astype(np.uint16 if n > 255 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="monai-pipeline",
        manufacturer_model_name="monai-pipeline lung nodule segmentation", software_versions=__version__,
        device_serial_number=sha[:16] or "unknown",
        series_description=f"monai-pipeline nodules{f' (model {sha[:12]})' if sha else ''}")
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return Path(path)


def _segment_numbers(seg, path: Path, segment: str | int | None) -> list[int]:
    """All segment numbers, or the one numbered or labelled ``segment``."""
    numbers = [int(n) for n in seg.segment_numbers]
    if segment is None:
        return numbers
    labels = {n: str(seg.get_segment_description(n).segment_label) for n in numbers}
    for n, label in labels.items():
        if str(segment) == label or str(segment) == str(n):
            return [n]
    listed = ", ".join(f"{n} '{v}'" for n, v in labels.items())
    raise InputError(path, f"has no segment numbered or labelled {segment!r} (segments: {listed})")


def read_dicom_seg(path: str | Path, src: SourceSeries, segment: str | int | None = None) -> np.ndarray:
    """The segments of the SEG at ``path`` (all, or the one numbered or labelled ``segment``) as one uint8 mask
    ((x, y, z), 1 inside) on ``src``'s grid."""
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(str(path))
    except Exception as err:  # noqa: BLE001 - highdicom raises several kinds for a malformed SEG
        raise InputError(path, f"not a readable DICOM SEG ({str(err).splitlines()[0][:160]})") from err
    frame_uid = str(seg.get("FrameOfReferenceUID", ""))
    if frame_uid and frame_uid != src.frame_of_reference_uid:
        raise InputError(path, f"is on frame of reference {frame_uid}, the image series {src.path} on "
                               f"{src.frame_of_reference_uid}")
    referenced = seg.get_source_image_uids()
    series = {str(s[1]) for s in referenced}
    if series and src.series_uid not in series:
        raise InputError(path, f"references series {sorted(series)[0]}, not the image series {src.series_uid}")
    known = set(src.sop_uids)
    missing = sorted({str(s[2]) for s in referenced} - known)
    if missing:
        raise InputError(path, f"references {len(missing)} slice(s) not in the image series {src.path} "
                               f"(first: {missing[0]})")
    numbers = _segment_numbers(seg, path, segment)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=src.sop_uids, segment_numbers=numbers, combine_segments=True, relabel=True,
        skip_overlap_checks=True)  # (slices, rows = y, columns = x), values = segment index or 0
    if pixels.shape[1:] != (src.geometry.size[1], src.geometry.size[0]):
        raise InputError(path, f"frames are {pixels.shape[2]}x{pixels.shape[1]} pixels, the image series' slices "
                               f"{src.geometry.size[0]}x{src.geometry.size[1]}")
    return np.ascontiguousarray((pixels > 0).transpose(2, 1, 0)).astype(np.uint8)
