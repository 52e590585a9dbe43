"""The DICOM CT series a DICOM annotation (SEG or RTSTRUCT) is read onto: its grid as :func:`~monai_pipeline.io.
reader.read_ct` reads it, its slices' SOP Instance UIDs in the order of the grid's third axis, and the series and
frame-of-reference UIDs an annotation of it must carry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom

from monai_pipeline.errors import InputError
from monai_pipeline.io.geometry import Geometry

#: SOP Class UIDs of the DICOM annotations read and written here
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass(frozen=True)
class SourceSeries:
    """A DICOM CT series as an annotation's reference.

    Attributes:
        geometry: the grid (x, y, z; mm, LPS direction) the image is read on.
        sop_uids: the slices' SOP Instance UIDs, in the order of the grid's third axis.
        series_uid: its Series Instance UID.
        frame_of_reference_uid: its Frame of Reference UID.
        path: the series folder (named in error lines).
    """

    geometry: Geometry
    sop_uids: list[str]
    series_uid: str
    frame_of_reference_uid: str
    path: str


def source_series(image: str | Path) -> SourceSeries:
    """The :class:`SourceSeries` of the DICOM series folder ``image``; one InputError when ``image`` is not a
    DICOM series read slice for slice (a NIfTI file, or a series whose slices were interpolated)."""
    from monai_pipeline.io.reader import read_ct  # MONAI-free, but the reader module is heavy: import on use

    path = Path(image)
    if not path.is_dir():
        raise InputError(path, "a DICOM annotation (SEG or RTSTRUCT) needs its DICOM series folder as the image",
                         hint="give the series folder as the image, or convert the annotation to NIfTI")
    vol = read_ct(path)
    if not vol.slices:
        raise InputError(path, "the series was not read slice for slice, so DICOM annotations cannot be placed on it")
    first = pydicom.dcmread(vol.slices[0].path, stop_before_pixels=True)
    return SourceSeries(vol.geometry, [s.sop_instance_uid for s in vol.slices], vol.series_instance_uid,
                        str(first.get("FrameOfReferenceUID", "")), str(path))
