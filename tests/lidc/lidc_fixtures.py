"""Build LIDC-style inputs for tests: XML in the real format and DICOM series whose positions and SOP UIDs
match it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monai_pipeline.io.dicom_writer import write_ct_series

NS = "http://www.nih.gov"


def square_outline(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """The ring of pixels of the rectangle [x0..x1] x [y0..y1], in order (an 8-connected closed chain)."""
    pts = [(x, y0) for x in range(x0, x1 + 1)] + [(x1, y) for y in range(y0 + 1, y1 + 1)]
    pts += [(x, y1) for x in range(x1 - 1, x0 - 1, -1)] + [(x0, y) for y in range(y1 - 1, y0, -1)]
    return pts


def roi_xml(z: float, sop: str, points, inclusion: bool = True) -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return (f"<roi><imageZposition>{z:.6f} </imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
            f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>")


def nodule_xml(nid: str, rois: list[str], malignancy: int | None = 3) -> str:
    chars = "" if malignancy is None else (
        "<characteristics><subtlety>4</subtlety><internalStructure>1</internalStructure><calcification>6"
        f"</calcification><sphericity>4</sphericity><margin>4</margin><lobulation>2</lobulation><spiculation>1"
        f"</spiculation><texture>5</texture><malignancy>{malignancy}</malignancy></characteristics>")
    return f"<unblindedReadNodule><noduleID>{nid}</noduleID>{chars}{''.join(rois)}</unblindedReadNodule>"


def read_xml(series_uid: str, sessions: list[list[str]], namespace: bool = True, non_nodules: str = "") -> str:
    ns = f' xmlns="{NS}"' if namespace else ""
    body = "".join(f"<readingSession><annotationVersion>3.12</annotationVersion><servicingRadiologistID>{i}"
                   f"</servicingRadiologistID>{''.join(s)}{non_nodules if i == 1 else ''}</readingSession>"
                   for i, s in enumerate(sessions, start=1))
    return (f'<?xml version="1.0" encoding="UTF-8"?><LidcReadMessage uid="1.2.3"{ns}><ResponseHeader>'
            f"<Version>1.8.1</Version><SeriesInstanceUid>{series_uid}</SeriesInstanceUid>"
            f"<StudyInstanceUID>1.2.3.4</StudyInstanceUID></ResponseHeader>{body}</LidcReadMessage>")


def make_series(folder: Path, z_positions, sop_uids, series_uid: str, patient_id: str, size: int = 64,
                spacing_xy: float = 0.7, hu: np.ndarray | None = None) -> Path:
    """A CT series with slices at ``z_positions`` (ascending, uniform) carrying ``sop_uids``."""
    z = np.asarray(z_positions, dtype=float)
    arr = hu if hu is not None else np.full((size, size, len(z)), -800, np.int16)
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    img.SetSpacing((spacing_xy, spacing_xy, float(z[1] - z[0])))
    img.SetOrigin((-size * spacing_xy / 2, -size * spacing_xy / 2, float(z[0])))
    write_ct_series(img, folder, patient_id=patient_id, series_uid=series_uid, sop_uids=list(sop_uids),
                    rng=np.random.default_rng(1))
    return folder


def interior_by_ray_casting(points, shape) -> np.ndarray:
    """Independent reference rasteriser: even-odd ray casting from each pixel centre towards +x, on the
    closed polygon through ``points``; outline pixels excluded."""
    pts = [tuple(p) for p in points]
    mask = np.zeros(shape, bool)
    if len(pts) < 3:
        return mask
    edges = list(zip(pts, pts[1:] + pts[:1], strict=True))
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    for px in range(max(min(xs), 0), min(max(xs), shape[0] - 1) + 1):
        for py in range(max(min(ys), 0), min(max(ys), shape[1] - 1) + 1):
            inside = False
            for (xa, ya), (xb, yb) in edges:
                if (ya > py) != (yb > py):
                    xc = xa + (py - ya) * (xb - xa) / (yb - ya)
                    if xc > px:
                        inside = not inside
            mask[px, py] = inside
    for x, y in pts:
        mask[x, y] = False
    return mask
