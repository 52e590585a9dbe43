"""Post-processing of binary masks, spacing-aware. Pure functions: inputs are never modified.

Arrays are 3D ``(x, y, z)`` (or channel-first ``(1, x, y, z)`` for the transform classes); ``spacing`` is the
voxel size in mm in the same axis order. Work is cropped to object bounding boxes, so cost follows the
objects, not the volume (a 512x512x300 mask takes well under a second).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from monai.transforms import Transform
from scipy import ndimage

from monai_pipeline.config import PipelineConfig, PostprocessConfig
from monai_pipeline.io.geometry import Geometry, spacing_from_affine
from monai_pipeline.lungs import axial_axis, bounding_box, lung_region_coarse

logger = logging.getLogger(__name__)

try:  # optional, much faster 3D labelling
    import cc3d
except ImportError:  # pragma: no cover - exercised when the extra is missing
    cc3d = None


def c_order(*arrays: np.ndarray, spacing: Sequence[float] | None = None):
    """Views of ``arrays`` in C memory order: Fortran-ordered inputs (the (x, y, z) views of SimpleITK arrays)
    are transposed, spacing reversed to match, so whole-volume passes never copy. Returns (arrays, spacing,
    transposed). Results computed on the views are transposed back with ``.T`` when ``transposed``."""
    arrs = [np.asarray(a) for a in arrays]
    transposed = arrs[0].flags.f_contiguous and not arrs[0].flags.c_contiguous
    if transposed:
        arrs = [a.T for a in arrs]
        spacing = None if spacing is None else tuple(spacing)[::-1]
    return arrs, spacing, transposed


def label_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Connected components of a boolean 3D mask (6, 18 or 26-connectivity); returns (labels, count). Labels are
    the smallest unsigned integer type that holds the count (cc3d; int32 from scipy), in the mask's memory order:
    casting a 512 x 512 x 300 label volume costs more than labelling it."""
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros(m.shape, np.int32), 0
    if cc3d is not None:
        lab, n = cc3d.connected_components(m, connectivity=connectivity, return_N=True)
        return lab, int(n)
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    lab, n = ndimage.label(m, structure=structure)
    return lab.astype(np.int32, copy=False), int(n)


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


def postprocess_mask(mask: np.ndarray, spacing: Sequence[float], min_volume_mm3: float = 0.0,
                     keep_largest: bool = False, fill: bool = False, opening_mm: float = 0.0,
                     closing_mm: float = 0.0, connectivity: int = 26) -> np.ndarray:
    """Closing -> opening -> hole filling -> small-component removal -> keep-largest; returns uint8 0/1.

    All steps run inside the mask's bounding box (padded by the morphology radius), where the work is."""
    (full,), spacing, transposed = c_order(np.asarray(mask) > 0, spacing=spacing)
    if transposed:
        return postprocess_mask(full, spacing, min_volume_mm3, keep_largest, fill, opening_mm, closing_mm,
                                connectivity).T
    pad = [int(np.ceil(max(closing_mm, opening_mm) / s)) + 2 for s in spacing]
    box = bounding_box(full, pad)
    out = np.zeros(full.shape, np.uint8)
    if box is None:
        return out
    m = full[box]
    if closing_mm > 0:
        m = binary_close(m, spacing, closing_mm)
    if opening_mm > 0:
        m = binary_open(m, spacing, opening_mm)
    if fill or min_volume_mm3 > 0:
        # one labelling; holes filled and small components dropped inside each component's own box
        m = m.copy()
        lab, _ = label_components(m, connectivity)
        vox = float(np.prod(spacing))
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None:
                continue
            comp = lab[sl] == i
            if fill and all(s.stop - s.start > 2 for s in sl):
                comp = _fill_box(comp)
            if np.count_nonzero(comp) * vox < min_volume_mm3:
                m[sl][lab[sl] == i] = False
            else:
                m[sl] |= comp
    if keep_largest:
        m = keep_largest_component(m, connectivity)
    out[box] = m
    return out


def postprocess_from_config(mask: np.ndarray, spacing: Sequence[float], post: PostprocessConfig) -> np.ndarray:
    """:func:`postprocess_mask` with the settings of a ``postprocess`` configuration section."""
    return postprocess_mask(mask, spacing, post.min_volume_mm3, post.keep_largest, post.fill_holes,
                            post.opening_mm, post.closing_mm, post.connectivity)


#: grid (mm) on which the lung filter's region is computed: a region test ("mostly inside the lungs?"), not a
#: contour, so a coarse grid suffices; on a 512 x 512 x 300 input it costs about what the cropped network grid did
LUNG_FILTER_RESOLUTION_MM = 3.0


def lung_filter(mask: np.ndarray, hu: np.ndarray, geometry: Geometry, post: PostprocessConfig,
                threshold_hu: float) -> np.ndarray:
    """Components of ``mask`` lying mostly outside the lungs dropped (``post.lung_min_fraction`` of a component
    must be inside :func:`~monai_pipeline.lungs.lung_region_coarse`). ``mask`` and ``hu`` (HU) share
    ``geometry``'s grid, axes (x, y, z). When no lungs are found (not a chest CT, as far as we can tell) the mask
    is kept."""
    m = np.asarray(mask) > 0
    box = bounding_box(m)
    out = np.zeros(m.shape, bool)
    if box is not None:
        out[box] = _lung_filter_box(m[box], box, hu, geometry, post, threshold_hu)
    return out


def _lung_filter_box(m: np.ndarray, box: tuple[slice, ...], hu: np.ndarray, geometry: Geometry,
                     post: PostprocessConfig, threshold_hu: float) -> np.ndarray:
    """:func:`lung_filter` of the part ``m`` (bool) of a mask that lies in ``box`` of the full grid."""
    region = lung_region_coarse(hu, geometry.spacing, threshold_hu, post.lung_closing_mm,
                                resolution_mm=LUNG_FILTER_RESOLUTION_MM, axis=axial_axis(geometry.direction))
    if not region.any():
        logger.warning("no lungs found in this scan (not a chest CT?): the lung filter kept every candidate")
        return m
    return keep_components_in_region(m, region.crop(box), post.lung_min_fraction, post.connectivity)


def postprocess_case(mask: np.ndarray, hu: np.ndarray | None, geometry: Geometry, cfg: PipelineConfig) -> np.ndarray:
    """The configured post-processing of one predicted mask on its input grid (x, y, z): the lung filter
    (``postprocess.lung_filter``; needs the CT in HU), then :func:`postprocess_from_config`. Used by ``infer``,
    the bundle, the Python API and ``postprocess`` alike; returns uint8 0/1 in ``mask``'s memory order.

    Everything runs inside the mask's bounding box, padded by the morphology radius: the whole volume is
    touched only to find that box and to write the result."""
    post = cfg.postprocess
    m = np.asarray(mask) > 0
    if post.lung_filter and hu is None:
        raise ValueError("the lung filter needs the CT (HU) of the mask")
    fortran = m.flags.f_contiguous and not m.flags.c_contiguous
    out = np.zeros(m.shape[::-1], np.uint8).T if fortran else np.zeros(m.shape, np.uint8)
    pad = [int(np.ceil(max(post.closing_mm, post.opening_mm) / s)) + 2 for s in geometry.spacing]
    box = bounding_box(m, pad)
    if box is None:
        return out
    sub = m[box]
    if post.lung_filter:
        sub = _lung_filter_box(sub, box, hu, geometry, post, cfg.preprocessing.body_threshold_hu)
    out[box] = postprocess_from_config(sub, geometry.spacing, post)
    return out


class PostprocessMask(Transform):
    """Array transform over :func:`postprocess_mask` for channel-first ``(1, X, Y, Z)`` masks.

    ``spacing`` (mm) is taken from the MetaTensor's affine when the input has one, else from ``spacing``.
    """

    def __init__(self, min_volume_mm3: float = 0.0, keep_largest: bool = False, fill: bool = False,
                 opening_mm: float = 0.0, closing_mm: float = 0.0, connectivity: int = 26,
                 spacing: Sequence[float] | None = None):
        if min_volume_mm3 < 0:
            raise ValueError(f"min_volume_mm3 must be >= 0, got {min_volume_mm3}")
        if connectivity not in (6, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
        self.kw = dict(min_volume_mm3=min_volume_mm3, keep_largest=keep_largest, fill=fill, opening_mm=opening_mm,
                       closing_mm=closing_mm, connectivity=connectivity)
        self.spacing = spacing

    def __call__(self, img):
        import torch
        from monai.data import MetaTensor

        spacing = self.spacing
        if isinstance(img, MetaTensor):
            spacing = spacing_from_affine(img.affine)
        if spacing is None:
            raise ValueError("spacing must be given for inputs without an affine")
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        out = postprocess_mask(arr[0], spacing, **self.kw)[None]
        if isinstance(img, MetaTensor):
            return MetaTensor(torch.as_tensor(out), meta=img.meta)
        return torch.as_tensor(out) if isinstance(img, torch.Tensor) else out
