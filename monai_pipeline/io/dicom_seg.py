"""DICOM Segmentation output (highdicom): a mask as a SEG object that references its source CT series.

The SEG shares the source's frame of reference and patient/study attributes (viewers file it under the same
study), references the source SOP instance of every frame, codes its segment as "Nodule" (SNOMED CT: category
morphologically abnormal structure, type nodule), and identifies the algorithm by name, version and the model
file's SHA-256. An empty prediction still gives a valid SEG: the standard needs at least one frame, so all
frames are kept (highdicom's behaviour, which it announces).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from monai_pipeline import __version__
from monai_pipeline.errors import InputError
from monai_pipeline.io.writer import atomic_path


def write_dicom_seg(mask_xyz: np.ndarray, slice_files: Sequence[str], path: str | Path,
                    provenance: dict | None = None) -> Path:
    """Write ``mask_xyz`` (uint8, (x, y, z) on the series' grid, third axis in the order of ``slice_files``) as
    a binary DICOM SEG at ``path``, atomically."""
    import highdicom as hd  # an optional extra (monai-pipeline[dicom]): imported when a SEG is written
    from pydicom.sr.codedict import codes

    mask = np.asarray(mask_xyz) > 0
    if mask.shape[2] != len(slice_files):
        raise InputError(path, f"mask has {mask.shape[2]} slices, the source series {len(slice_files)}")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in slice_files]
    frames = np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8)  # (slices, rows = y, columns = x)
    sha = (provenance or {}).get("model_sha256", "")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="monai-pipeline", version=__version__, family=codes.DCM.ArtificialIntelligence,
        parameters={"model_sha256": sha} if sha else None)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Nodule",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="monai-pipeline",
        manufacturer_model_name="monai-pipeline lung nodule segmentation", software_versions=__version__,
        device_serial_number=sha[:16] or "unknown",
        series_description=f"monai-pipeline nodules{f' (model {sha[:12]})' if sha else ''}")
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return Path(path)
