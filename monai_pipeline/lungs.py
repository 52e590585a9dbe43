"""Where the lungs are: the one implementation behind the lung crop, hard-negative sampling and the lung filter.

Arrays are 3D ``(x, y, z)``; ``spacing`` is the voxel size in mm in the same order; HU thresholds in HU.
The "lungs" start as air (below ``threshold_hu``) enclosed by the body within an *axial* slice: air outside the
body touches the slice border and is excluded. Enclosed air is also gas in the stomach and bowel, so each
connected component of it is then tested (:func:`lung_air`): aerated lung is tissue, air and blood mixed, about
-850 HU with vessels in it, while gas is nearly pure air, mostly below -950 HU. Measured on the real CTs of
``../shared/realct`` (TotalSegmentator's organs as reference): lung-base components had 0.00 of their voxels
below -950 HU and medians of -784 and -802 HU; stomach and bowel gas 0.43-0.76 below -950 HU and medians of -939
to -975 HU (small pockets, where partial volume dilutes the gas, 0.24-0.30). The thresholds below leave room for
emphysema (a lung with 40 % of its voxels below -950 HU is very severe). The axial axis is the third one on RAS
grids (network space); on an input grid it is found from the direction matrix
(:func:`~monai_pipeline.io.geometry.axial_axis`).

Not handled: the trachea and main bronchi join the lungs' component (they count as lung); a lung collapsed or
consolidated (median above -700 HU) is not found; a scan without lung-like air falls back to the body (crop)
or keeps every candidate (lung filter).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from monai_pipeline.arrays import bounding_box, distance_mm, subsample_factors


@dataclass(frozen=True)
class CoarseMask:
    """A boolean mask of ``shape`` held on a subsampled grid: ``small`` is the full mask's ``[::f0, ::f1, ::f2]``,
    read back by nearest neighbour. Callers ask for what they need (a bounding box, or the mask inside a box)
    instead of a full-size copy, which on a 512 x 512 x 300 input costs about 0.3 s."""

    small: np.ndarray
    factors: tuple[int, ...]
    shape: tuple[int, ...]

    def any(self) -> bool:
        return bool(self.small.any())

    def crop(self, box: Sequence[slice]) -> np.ndarray:
        """The full-resolution mask inside ``box`` (slices with explicit start and stop)."""
        idx = [np.minimum(np.arange(b.start, b.stop) // f, m - 1)
               for b, f, m in zip(box, self.factors, self.small.shape, strict=True)]
        return self.small[np.ix_(*idx)]

    def full(self) -> np.ndarray:
        return self.crop(tuple(slice(0, n) for n in self.shape))

    def bounding_box(self) -> tuple[slice, ...] | None:
        """The full-resolution bounding box (as :func:`bounding_box` of :meth:`full`, without making it)."""
        small_box = bounding_box(self.small)
        if small_box is None:
            return None
        return tuple(slice(b.start * f, min(b.stop * f, n))
                     for b, f, n in zip(small_box, self.factors, self.shape, strict=True))


def in_slice_structure(axis: int = 2) -> np.ndarray:
    """3x3x3 structuring element: 4-connectivity within the slices normal to ``axis``, none across them."""
    st = np.zeros((3, 3, 3), bool)
    index = [slice(None)] * 3
    index[axis] = 1
    st[tuple(index)] = ndimage.generate_binary_structure(2, 1)
    return st


def fill_in_slices(mask: np.ndarray, axis: int = 2) -> np.ndarray:
    """Holes of a boolean mask filled slice by slice (slices normal to ``axis``): exactly
    ``scipy.ndimage.binary_fill_holes(mask, structure=in_slice_structure(axis))`` (tested), from one labelling of
    the background instead of scipy's iterated dilation (faster: docs/performance.md). A background component is outside
    when it touches its slice's border."""
    m = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(~m, structure=in_slice_structure(axis))
    if n == 0:
        return m.copy()
    outside = np.zeros(n + 1, bool)  # label 0 is the mask itself, kept by the union below
    for ax in (a for a in range(3) if a != axis):
        for end in (0, -1):
            outside[np.take(labels, end, axis=ax)] = True
    return m | ~outside[labels]


#: HU below which a voxel of enclosed air counts as gas (pure air) rather than aerated lung
GAS_HU = -950.0
#: a component with more than this fraction of its voxels below :data:`GAS_HU` is gas, not lung
MAX_GAS_FRACTION = 0.4
#: a component whose median is above this (HU) is not aerated lung (fat, partial-volume rims, table padding)
MAX_LUNG_MEDIAN_HU = -700.0
#: lung components smaller than this fraction of the largest one are dropped (gas pockets that pass the HU tests)
MIN_RELATIVE_SIZE = 0.1
#: half of a lung component's voxels lie at least this deep (mm) inside the body (measured on the real CT: the
#: lung bases' median depth 30-44 mm, air trapped against the skin 6 mm; the phantoms' thin chest walls leave
#: 12-14 % of their lungs shallower than this)
MIN_DEPTH_MM = 10.0
#: ... and the largest must hold at least this much air (ml) for the scan to count as showing lungs
MIN_LUNG_ML = 5.0
#: the solid region reaches this far (mm) beyond the air: the pleura and the partial-volume rim of the lung
#: surface, which a reference lung segmentation includes (3 mm voxels at the lung bases of the real CT: 0.937 of
#: TotalSegmentator's lung voxels without the rim, 0.998 with it; the nearest stomach or bowel voxel was 10 mm away)
LUNG_RIM_MM = 5.0


def lung_air(hu: np.ndarray, spacing: Sequence[float], threshold_hu: float = -500.0, axis: int = 2,
             min_voxels: int = 1) -> np.ndarray:
    """The lung-like components of :func:`enclosed_air` (6-connected in 3D) of ``hu`` (x, y, z; ``spacing`` mm):

    * at most :data:`MAX_GAS_FRACTION` of their voxels below :data:`GAS_HU` and a median at most
      :data:`MAX_LUNG_MEDIAN_HU` (aerated lung, not gas or fat);
    * inside the trunk: half of their voxels at least :data:`MIN_DEPTH_MM` from the air outside the body (air
      trapped between the skin and a blanket or the table is enclosed too);
    * at least :data:`MIN_RELATIVE_SIZE` of the largest such component and ``min_voxels`` voxels, the largest
      holding :data:`MIN_LUNG_ML` or more.

    Empty when no component qualifies (not a chest CT)."""
    hu = np.ascontiguousarray(hu)  # a strided (subsampled) view copied once, so that ravel() below is free
    air = enclosed_air(hu, threshold_hu, axis)
    labels, n = ndimage.label(air)
    if n == 0:
        return air
    flat = labels.ravel()
    inside = flat > 0
    lab, values = flat[inside], hu.ravel()[inside]  # the enclosed air's voxels: label and HU
    counts = np.bincount(lab, minlength=n + 1)
    gas = np.bincount(lab[values < GAS_HU], minlength=n + 1)
    # "median at most MAX_LUNG_MEDIAN_HU" as "at least half the voxels at or below it": one pass over the voxels
    # instead of a per-component selection (scipy's median of an even count averages the two middle values; the
    # two tests can then differ only when those straddle the threshold)
    dense = np.bincount(lab[values <= MAX_LUNG_MEDIAN_HU], minlength=n + 1)
    lungish = np.zeros(n + 1, bool)
    lungish[1:] = (gas[1:] <= MAX_GAS_FRACTION * counts[1:]) & (dense[1:] >= 0.5 * counts[1:])
    if lungish.any():
        outside = ~air & (hu <= threshold_hu)
        if outside.any():
            depth = distance_mm(outside, spacing)
            shallow = np.bincount(lab[depth.ravel()[inside] < MIN_DEPTH_MM], minlength=n + 1)
            lungish &= shallow <= 0.5 * counts
    if not lungish.any():
        return np.zeros_like(air)
    largest = counts[lungish].max()
    if largest * float(np.prod(spacing)) / 1000.0 < MIN_LUNG_ML:
        return np.zeros_like(air)
    keep = lungish & (counts >= max(min_voxels, MIN_RELATIVE_SIZE * largest))
    return keep[labels]


def enclosed_air(hu: np.ndarray, threshold_hu: float = -500.0, axis: int = 2) -> np.ndarray:
    """Air (HU <= ``threshold_hu``) enclosed by the body (HU above it) within each slice normal to ``axis``."""
    body = np.asarray(hu) > threshold_hu
    return fill_in_slices(body, axis) & ~body


def lung_region(hu: np.ndarray, spacing: Sequence[float], threshold_hu: float = -500.0,
                closing_mm: float = 10.0, resolution_mm: float = 2.0, axis: int = 2,
                rim_mm: float = LUNG_RIM_MM) -> np.ndarray:
    """:func:`lung_region_coarse` at full size (x, y, z), bool."""
    return lung_region_coarse(hu, spacing, threshold_hu, closing_mm, resolution_mm, axis, rim_mm).full()


def lung_region_coarse(hu: np.ndarray, spacing: Sequence[float], threshold_hu: float = -500.0,
                       closing_mm: float = 10.0, resolution_mm: float = 2.0, axis: int = 2,
                       rim_mm: float = LUNG_RIM_MM) -> CoarseMask:
    """The lungs as a solid region: :func:`lung_air` (see the module docstring) closed by ``closing_mm`` (so vessels,
    nodules and juxtapleural nodules count as inside), holes filled slice by slice, widened by ``rim_mm``
    (default :data:`LUNG_RIM_MM`; 0 for the lungs without their pleural rim). ``axis`` is the axial array
    axis. Computed on a grid of about ``resolution_mm`` (a region, not a contour, is needed) and returned as a
    :class:`CoarseMask` of ``hu``'s shape. Closing uses two Euclidean distance maps (:func:`distance_mm`,
    spacing-aware)."""
    hu = np.asarray(hu)
    f = subsample_factors(spacing, resolution_mm)
    small = _solid_lungs(hu[::f[0], ::f[1], ::f[2]], [s * k for s, k in zip(spacing, f, strict=True)],
                         threshold_hu, closing_mm, axis, rim_mm)
    return CoarseMask(small, f, hu.shape)


def _solid_lungs(hu: np.ndarray, spacing: Sequence[float], threshold_hu: float, closing_mm: float,
                 axis: int, rim_mm: float) -> np.ndarray:
    air = lung_air(hu, spacing, threshold_hu, axis)
    if not air.any():
        return air
    box = bounding_box(air, [int(np.ceil((closing_mm + rim_mm) / s)) + 1 for s in spacing])
    sub = air[box]
    dilated = distance_mm(sub, spacing) <= closing_mm
    closed = distance_mm(~dilated, spacing) > closing_mm
    closed = fill_in_slices(closed | sub, axis)
    out = np.zeros_like(air)
    out[box] = distance_mm(closed, spacing) <= rim_mm if rim_mm > 0 else closed
    return out
