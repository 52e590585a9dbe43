"""Rasterising LIDC contours with the LIDC convention.

The radiologists' outline is the first ring of pixels *outside* the nodule, so a slice mask is the set of
pixels whose centres lie strictly inside the outline polygon, outline pixels themselves excluded (the
default of pylidc's ``Annotation.boolean_mask``). Several inclusion rois on one slice are OR-ed; an
exclusion roi (``inclusion`` FALSE) cuts out the pixels strictly inside its own outline.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from matplotlib.path import Path as MplPath


def polygon_interior(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (columns, rows) = (x, y) mask of pixels strictly inside the closed outline ``points`` (x, y),
    outline pixels excluded. A single point or a line has no interior."""
    mask = np.zeros(shape, dtype=bool)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return mask
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, shape[0] - 1), min(y1, shape[1] - 1)
    if x1 < x0 or y1 < y0:
        return mask
    xs, ys = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1), indexing="ij")
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
    inside = MplPath(np.vstack([pts, pts[:1]]), closed=True).contains_points(centres).reshape(xs.shape)
    mask[x0:x1 + 1, y0:y1 + 1] = inside
    outline = pts.astype(int)
    ok = (outline[:, 0] >= 0) & (outline[:, 0] < shape[0]) & (outline[:, 1] >= 0) & (outline[:, 1] < shape[1])
    mask[outline[ok, 0], outline[ok, 1]] = False
    return mask


def slice_mask(rois: Iterable, shape: tuple[int, int]) -> np.ndarray:
    """OR of the inclusion interiors minus the exclusion interiors, for the rois of one slice."""
    inc = np.zeros(shape, dtype=bool)
    exc = np.zeros(shape, dtype=bool)
    for r in rois:
        (inc if r.inclusion else exc)[...] |= polygon_interior(r.points, shape)
    return inc & ~exc
