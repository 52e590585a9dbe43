"""From reads to nodules: place rois on slices, rasterise each reader's annotation in 3D, group annotations
of different readers into nodules, and build consensus masks.

Voxel indices are ``(x, y, k)`` = (column, row, slice index in position order) on the series grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from monai_pipeline.io.geometry import Geometry
from monai_pipeline.lidc.raster import slice_mask
from monai_pipeline.lidc.xml import CHARACTERISTICS, LidcRead, NoduleRead

#: a roi whose SOP UID is unknown is placed on the nearest slice only if it lies this close (mm)
Z_TOLERANCE_MM = 0.5


@dataclass
class SliceIndex:
    """Where each slice of the series is: SOP Instance UID -> k, and the z position (mm) of slice k."""

    sop_to_k: dict[str, int]
    z: np.ndarray

    def place(self, sop_uid: str, z: float, tol_mm: float = Z_TOLERANCE_MM) -> int | None:
        k = self.sop_to_k.get(sop_uid)
        if k is not None:
            return k
        j = int(np.argmin(np.abs(self.z - z)))
        return j if abs(float(self.z[j]) - z) <= tol_mm else None


@dataclass
class Annotation:
    """One reader's annotation of one nodule, rasterised: sorted linear voxel indices on the series grid."""

    read: NoduleRead
    voxels: np.ndarray  # int64 linear indices into the (x, y, k) volume, sorted, unique

    @property
    def reader(self) -> int:
        return self.read.session


@dataclass
class Nodule:
    number: int
    annotations: list[Annotation]
    consensus: np.ndarray  # linear indices
    readers: list[int] = field(default_factory=list)


def rasterise(read: NoduleRead, index: SliceIndex, shape: tuple[int, int, int],
              problems: list[str]) -> Annotation | None:
    """3D voxels of one nodule read; rois that match no slice are reported in ``problems`` and skipped."""
    by_slice: dict[int, list] = {}
    for roi in read.rois:
        k = index.place(roi.sop_uid, roi.z)
        if k is None:
            problems.append(f"reading session {read.session}, nodule {read.nodule_id}: roi at z={roi.z:g} mm "
                            f"matches no slice (SOP UID unknown, nearest slice "
                            f"{float(np.min(np.abs(index.z - roi.z))):.2f} mm away)")
            continue
        by_slice.setdefault(k, []).append(roi)
    parts = []
    for k, rois in by_slice.items():
        m = slice_mask(rois, shape[:2])
        xs, ys = np.nonzero(m)
        parts.append(np.ravel_multi_index((xs, ys, np.full_like(xs, k)), shape))
    if not parts:
        return None
    vox = np.unique(np.concatenate(parts)).astype(np.int64)
    return Annotation(read, vox) if len(vox) else None


def _points_mm(voxels: np.ndarray, shape, geometry: Geometry) -> np.ndarray:
    return geometry.index_to_lps(np.stack(np.unravel_index(voxels, shape), axis=1))


def group_annotations(annotations: list[Annotation], shape, geometry: Geometry,
                      tol_mm: float | None = None) -> list[list[Annotation]]:
    """Group annotations of different readers into nodules.

    Two annotations belong together when they share a voxel or their closest voxels lie within ``tol_mm``
    (default: the largest voxel size, i.e. touching). Pairs are merged closest first, and a merge that would
    put two annotations of one reader into one nodule is refused, so each reader contributes at most one.
    """
    n = len(annotations)
    if tol_mm is None:
        tol_mm = float(max(geometry.spacing))
    pts = [_points_mm(a.voxels, shape, geometry) for a in annotations]
    trees = [cKDTree(p) for p in pts]
    edges = []
    for i in range(n):
        for j in range(i + 1, n):
            if annotations[i].reader == annotations[j].reader:
                continue
            shared = len(np.intersect1d(annotations[i].voxels, annotations[j].voxels, assume_unique=True))
            if shared:
                edges.append((0.0, -shared, i, j))
                continue
            small, big = (i, j) if len(pts[i]) <= len(pts[j]) else (j, i)
            d = float(trees[big].query(pts[small], k=1)[0].min())
            if d <= tol_mm:
                edges.append((d, 0, i, j))
    parent = list(range(n))
    readers = [{a.reader} for a in annotations]

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for _, _, i, j in sorted(edges):
        ri, rj = find(i), find(j)
        if ri != rj and not (readers[ri] & readers[rj]):
            parent[rj] = ri
            readers[ri] |= readers[rj]
    groups: dict[int, list[Annotation]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(annotations[i])
    # deterministic order: by the first voxel of each group
    return sorted(groups.values(), key=lambda g: min(int(a.voxels[0]) for a in g))


def consensus_voxels(group: list[Annotation], level: float) -> np.ndarray:
    """Voxels marked by at least ``level`` (a fraction) of the readers who annotated this nodule."""
    if not 0 < level <= 1:
        raise ValueError(f"consensus must be > 0 and <= 1, got {level}")
    allv = np.concatenate([a.voxels for a in group])
    vox, counts = np.unique(allv, return_counts=True)
    return vox[counts >= level * len(group) - 1e-9]


def median_characteristics(group: list[Annotation]) -> dict[str, float]:
    out = {}
    for name in CHARACTERISTICS:
        vals = [a.read.characteristics[name] for a in group if name in a.read.characteristics]
        out[name] = float(np.median(vals)) if vals else float("nan")
    return out


def build_nodules(read: LidcRead, index: SliceIndex, geometry: Geometry, consensus: float = 0.5,
                  tol_mm: float | None = None) -> tuple[list[Nodule], list[Annotation], list[str]]:
    """All nodules (>= 3 mm reads with contours) of a read, their consensus voxels, and problems found."""
    shape = geometry.size
    problems: list[str] = []
    anns = []
    for nr in read.nodule_reads:
        if nr.is_small:
            continue
        a = rasterise(nr, index, shape, problems)
        if a is not None:
            anns.append(a)
    groups = group_annotations(anns, shape, geometry, tol_mm)
    nodules = []
    for i, g in enumerate(groups, start=1):
        nodules.append(Nodule(i, g, consensus_voxels(g, consensus), sorted(a.reader for a in g)))
    return nodules, anns, problems
