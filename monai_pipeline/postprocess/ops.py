"""Operations on binary masks, spacing-aware, that the post-processing steps are made of. Pure functions:
inputs are never modified.

Arrays are 3D ``(x, y, z)``; ``spacing`` is the voxel size in mm in the same axis order. Work is cropped to
object bounding boxes, so cost follows the objects, not the volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from monai_pipeline.arrays import bounding_box, connectivity_structure, label_components


def remove_small_components(mask: np.ndarray, spacing: Sequence[float], min_volume_mm3: float,
                            connectivity: int = 26) -> np.ndarray:
    """Drop connected components whose volume (mm3) is below ``min_volume_mm3``."""
    m = np.asarray(mask, dtype=bool)
    if min_volume_mm3 <= 0 or not m.any():
        return m.copy()
    lab, n = label_components(m, connectivity)
    sizes = np.bincount(lab.ravel(order="K"), minlength=n + 1) * float(np.prod(spacing))
    if np.all(sizes[1:] >= min_volume_mm3):
        return m.copy()
    keep = sizes >= min_volume_mm3
    keep[0] = False
    return keep[lab]


def principal_moments(idx: np.ndarray, spacing, voxel_extent: bool = True) -> np.ndarray:
    """Eigenvalues (mm^2, ascending) of the covariance of a component's voxel centres in physical space, from its
    voxel indices ``idx`` (N, 3) on a grid of ``spacing`` (mm, same axis order); the direction cosines rotate the
    covariance without changing them. ``voxel_extent=False`` gives SimpleITK's ``GetPrincipalMoments``; the default
    adds each voxel's own extent (a uniform box: spacing^2 / 12 per axis), so a one-voxel-thick line still has a
    width."""
    pts = np.asarray(idx, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    cov = np.cov(pts, rowvar=False, bias=True) if len(pts) > 1 else np.zeros((3, 3))
    if voxel_extent:
        cov = cov + np.diag(np.asarray(spacing, dtype=np.float64) ** 2 / 12.0)
    return np.clip(np.linalg.eigvalsh(cov), 0.0, None)


def elongation(idx: np.ndarray, spacing) -> float:
    """sqrt(largest / middle principal moment) (SimpleITK's definition, with each voxel's extent): about 1 for a
    sphere or a disc, large for a vessel-like tube."""
    m = principal_moments(idx, spacing)
    return float(np.sqrt(m[2] / m[1]))


def remove_elongated_components(mask: np.ndarray, spacing: Sequence[float], max_elongation: float,
                                connectivity: int = 26) -> np.ndarray:
    """Drop connected components whose :func:`elongation` exceeds ``max_elongation`` (vessel-like tubes; a
    nodule is about 1); each component is measured inside its own bounding box."""
    m = np.asarray(mask, dtype=bool)
    if max_elongation <= 0 or not m.any():
        return m.copy()
    lab, _ = label_components(m, connectivity)
    out = m.copy()
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        if elongation(np.argwhere(comp), spacing) > max_elongation:
            out[sl][comp] = False
    return out


def neck_regions(component: np.ndarray, spacing: Sequence[float], min_depth_mm: float,
                 connectivity: int = 26) -> np.ndarray:
    """The parts of one connected component (boolean, (x, y, z)) between its necks: labels 1..n (0 outside it).

    The component's distance map (mm from each voxel to the nearest background voxel, ``spacing`` respected) is
    flooded from its maxima by SimpleITK's morphological watershed with dynamic ``min_depth_mm``: a part whose
    inscribed radius exceeds the radius of its narrowest passage to the rest by at least ``min_depth_mm`` is a
    region of its own (a nodule sitting on a vessel, two nodules touching); shallower bulges (a vessel's wavy
    width, a lobulated nodule's lobes) stay with their neighbours. Where a passage is a long tube of even width,
    the cut falls somewhere along it. Voxels outside the array count as background; background voxels are 0."""
    comp = np.asarray(component, dtype=bool)
    sampling = [float(s) for s in spacing]
    dist = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=sampling)[1:-1, 1:-1, 1:-1].astype(np.float32)
    if float(dist.max()) <= min_depth_mm:  # no part can be that much wider than a passage out of it
        return comp.astype(np.int32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(-dist.transpose(2, 1, 0)))
    basins = sitk.MorphologicalWatershed(image, level=float(min_depth_mm), markWatershedLine=False,
                                         fullyConnected=connectivity == 26)
    regions = sitk.GetArrayFromImage(basins).transpose(2, 1, 0).astype(np.int32)
    regions[~comp] = 0
    _, dense = np.unique(regions, return_inverse=True)
    return dense.reshape(regions.shape).astype(np.int32)


def split_at_necks(mask: np.ndarray, spacing: Sequence[float], min_depth_mm: float,
                   connectivity: int = 26) -> np.ndarray:
    """Cut each connected component at its necks (:func:`neck_regions`) by removing the voxels where two of its
    parts touch (under ``connectivity``), so that each part is a component -- and a candidate lesion -- of its
    own, scored and measured apart. A nodule on a vessel then becomes a compact candidate beside an elongated
    one, instead of one large branching candidate that the second stage rejects and whose centre misses the
    nodule. Each component is processed inside its own bounding box; 0 = off."""
    m = np.asarray(mask, dtype=bool)
    out = m.copy()
    if min_depth_mm <= 0 or not m.any():
        return out
    lab, _ = label_components(m, connectivity)
    structure = connectivity_structure(connectivity)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(sl, m.shape, strict=True))
        comp = lab[box] == i
        regions = neck_regions(comp, spacing, min_depth_mm, connectivity)
        top = int(regions.max())
        if top <= 1:
            continue
        higher = ndimage.maximum_filter(regions, footprint=structure, mode="constant", cval=0)
        lower = ndimage.minimum_filter(np.where(comp, regions, top + 1), footprint=structure, mode="constant",
                                       cval=top + 1)
        out[box] &= ~(comp & ((higher > regions) | (lower < regions)))
    return out


def keep_largest_component(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    lab, n = label_components(m, connectivity)
    if n <= 1:
        return m.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _fill_box(sub: np.ndarray) -> np.ndarray:
    padded = np.pad(sub, 1, constant_values=False)
    bg, _ = ndimage.label(~padded)  # 6-connected background
    return ~(bg == bg[0, 0, 0])[1:-1, 1:-1, 1:-1] | sub


def fill_holes(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Fill cavities fully enclosed in 3D (6-connected background not reaching outside the object).

    Equivalent to ``scipy.ndimage.binary_fill_holes``, but each connected component is filled inside its own
    bounding box (a hole lies inside the box of the component that encloses it), so scattered objects cost
    what they cover, not the volume."""
    m = np.asarray(mask, dtype=bool)
    out = m.copy()
    lab, n = label_components(m, connectivity)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is not None and all(s.stop - s.start > 2 for s in sl):  # thinner boxes cannot enclose a hole
            out[sl] |= _fill_box(lab[sl] == i)
    return out


def ellipsoid_structure(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean ball of ``radius_mm`` in physical space, sampled on a grid of ``spacing`` (mm)."""
    r = [max(0, int(np.floor(radius_mm / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-ri, ri + 1) for ri in r)]
    d2 = sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True))
    return d2 <= radius_mm ** 2 + 1e-9


def _morph(mask: np.ndarray, spacing, radius_mm: float, op) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    if radius_mm <= 0 or not m.any():
        return m.copy()
    st = ellipsoid_structure(radius_mm, spacing)
    pad = [s // 2 + 1 for s in st.shape]
    box = bounding_box(m, pad)
    out = np.zeros_like(m)
    sub = np.pad(m[box], [(p, p) for p in pad])
    res = op(sub, structure=st)
    out[box] = res[tuple(slice(p, -p) for p in pad)]
    return out


def binary_open(mask: np.ndarray, spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """Morphological opening with a ball of ``radius_mm`` (respects anisotropic spacing)."""
    return _morph(mask, spacing, radius_mm, ndimage.binary_opening)


def binary_close(mask: np.ndarray, spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm`` (respects anisotropic spacing)."""
    return _morph(mask, spacing, radius_mm, ndimage.binary_closing)


def keep_components_in_region(mask: np.ndarray, region: np.ndarray, min_fraction: float = 0.5,
                              connectivity: int = 26) -> np.ndarray:
    """Keep the components of ``mask`` with at least ``min_fraction`` of their voxels inside ``region``.
    The work happens inside the mask's bounding box (components cannot reach outside it), and the region is
    read only at the mask's voxels."""
    full = np.asarray(mask) > 0
    out = np.zeros(full.shape, bool)
    box = bounding_box(full)
    if box is None:
        return out
    m = full[box]
    lab, n = label_components(m, connectivity)
    at = np.nonzero(m)
    labels_at = lab[at]
    total = np.bincount(labels_at, minlength=n + 1)
    inside = np.bincount(labels_at, weights=np.asarray(region[box])[at].astype(np.float64), minlength=n + 1)
    keep = inside >= min_fraction * np.maximum(total, 1)
    keep[0] = False
    out[box] = keep[lab]
    return out
