"""Per-lesion measurements: one row per connected component of a mask, in physical units."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from monai_pipeline.arrays import bounding_box, label_components
from monai_pipeline.io.geometry import Geometry
from monai_pipeline.io.writer import atomic_write_text
from monai_pipeline.postprocess.ops import elongation

LESION_FIELDS = ("lesion", "volume_mm3", "equivalent_diameter_mm", "longest_axial_diameter_mm", "elongation",
                 "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "mean_hu", "max_hu", "n_voxels", "score",
                 "network_score")
#: a lesion's score from its voxel indices (N, 3) on the mask's grid, e.g. its maximum foreground probability
ScoreFn = Callable[[np.ndarray], float]


def _longest_in_plane(points_mm: np.ndarray) -> float:
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) > 3:
        try:
            points_mm = points_mm[ConvexHull(points_mm).vertices]
        except QhullError:  # collinear points
            pass
    return float(pdist(points_mm).max())


def longest_axial_diameter(component: np.ndarray, spacing) -> float:
    """Largest in-plane extent (mm) over the slices (third axis) of a component, measured between voxel centres
    plus one voxel (so a single voxel measures its width)."""
    best = 0.0
    sx, sy = float(spacing[0]), float(spacing[1])
    for k in range(component.shape[2]):
        pts = np.argwhere(component[:, :, k])
        if len(pts) == 0:
            continue
        best = max(best, _longest_in_plane(pts * [sx, sy]) + min(sx, sy))
    return best


def lesion_table(mask: np.ndarray, geometry: Geometry, hu: np.ndarray | None = None,
                 connectivity: int = 26, score: ScoreFn | None = None, return_labels: bool = False):
    """Rows of :data:`LESION_FIELDS` for each component of ``mask`` (x, y, z) on ``geometry``.

    Centroids are patient coordinates in mm (LPS, as DICOM); the longest axial diameter is measured in the
    image's slice plane; ``score`` (a detection score, blank without ``score``) is computed from each
    component's voxel indices, and ``network_score`` repeats it (a second-stage classifier may replace ``score``
    later, :func:`~monai_pipeline.postprocess.candidates.rescore`; ``network_score`` stays). ``return_labels``
    also returns the component labels (x, y, z; row ``k`` is label ``k + 1``).
    """
    full = np.asarray(mask) > 0
    box = bounding_box(full)  # all work inside the mask's bounding box
    if box is None:
        return ([], np.zeros(full.shape, np.int32)) if return_labels else []
    m, origin = full[box], np.array([b.start for b in box])
    hu_box = np.asarray(hu)[box] if hu is not None else None
    if m.flags.f_contiguous and not m.flags.c_contiguous:  # (x, y, z) view of a (z, y, x) array
        lab_c, n = label_components(m.T, connectivity)
        lab = lab_c.T
        objects = [None if sl is None else sl[::-1] for sl in ndimage.find_objects(lab_c)]
    else:
        lab, n = label_components(m, connectivity)
        objects = ndimage.find_objects(lab)
    rows = []
    vox = float(np.prod(geometry.spacing))
    lps = geometry.lps_affine()
    for i, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        idx = np.argwhere(comp) + [s.start for s in sl] + origin
        vol = len(idx) * vox
        s = float(score(idx)) if score is not None else ""
        centroid = lps[:3, :3] @ idx.mean(axis=0) + lps[:3, 3]
        rows.append({
            "lesion": len(rows) + 1, "volume_mm3": round(vol, 3),
            "equivalent_diameter_mm": round(float((6 * vol / np.pi) ** (1 / 3)), 3),
            "longest_axial_diameter_mm": round(longest_axial_diameter(comp, geometry.spacing), 3),
            "elongation": round(elongation(idx, geometry.spacing), 3),
            "centroid_x_mm": round(float(centroid[0]), 3), "centroid_y_mm": round(float(centroid[1]), 3),
            "centroid_z_mm": round(float(centroid[2]), 3),
            "mean_hu": round(float(hu_box[sl][comp].mean()), 2) if hu_box is not None else float("nan"),
            "max_hu": round(float(hu_box[sl][comp].max()), 2) if hu_box is not None else float("nan"),
            "n_voxels": int(len(idx)),
            "score": s, "network_score": s,  # unrounded: it ranks; a second stage may replace only ``score``
        })
    if not return_labels:
        return rows
    labels = np.zeros(full.shape, np.int32)
    labels[box] = lab
    return rows, labels


#: the columns of a case's candidate table: every candidate lesion, ``kept`` 1 where it is in the mask
CANDIDATE_FIELDS = ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "volume_mm3", "score", "network_score",
                    "kept")


def write_candidate_csv(rows: list[dict], path: str | Path) -> Path:
    """The candidate table (:data:`CANDIDATE_FIELDS`): lesion-table ``rows`` (every candidate, before the
    operating point's cut), each with ``kept`` (true where the candidate is in the final mask; written 1/0)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CANDIDATE_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows({**r, "kept": int(r["kept"])} for r in rows)
    return atomic_write_text(path, buf.getvalue())


def write_lesion_csv(rows: list[dict], path: str | Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LESION_FIELDS)
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())
