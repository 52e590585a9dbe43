"""Synthetic nodules in a real CT: training cases whose background is real anatomy (``synth --background``).

A model trained on phantoms alone has never seen real vessels, bowel, bone or scanner noise as background, and
calls them nodules on a real scan. Here nodules are drawn into the lungs of a real CT instead:

* where: inside :func:`~monai_pipeline.lungs.lung_region` without its pleural rim (the lungs found in the scan
  itself), at three sites --
  *interior* (the ball and a margin inside the lung air), *juxtavascular* (touching a vessel: lung voxels above
  -300 HU) and *juxtapleural* (65-95 % of a shell around it inside the lung, the rest in the chest wall);
* what: solid, part-solid (ground glass with a solid core of half the radius) and ground-glass, spherical,
  lobulated or spiculated (the phantom generator's shapes,
  :func:`~monai_pipeline.data.synthetic.nodule_signed_distance`),
  3-30 mm, never overlapping;
* how it looks: solid at the patient's own soft-tissue HU (median of voxels in [-100, 150] HU), ground glass
  250 HU above the patient's aerated lung, partial volume over one voxel at the edge, and the scan's own noise
  (its level estimated from the lung parenchyma, correlated like the phantoms' noise) inside the nodule;
* the label: the voxels at least half covered by the nodule, inside the lung region (a juxtapleural nodule is
  not drawn into the chest wall) -- exact by construction.

Coordinates are physical (mm, LPS) through the image's own affine, so any orientation works.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from monai_pipeline.data.synthetic import (
    NODULE_KINDS,
    NODULE_SHAPES,
    NODULE_SITES,
    Nodule,
    nodule_params,
    nodule_signed_distance,
    occupancy,
)
from monai_pipeline.errors import InputError
from monai_pipeline.io.geometry import Geometry, axial_axis, sitk_to_xyz_array, xyz_array_to_sitk
from monai_pipeline.lungs import lung_air, lung_region

logger = logging.getLogger(__name__)

VESSEL_HU = -300.0  # lung voxels brighter than this are vessels (or airway walls)
GGO_ABOVE_LUNG_HU = 250.0  # ground glass: this much above the patient's aerated lung


@dataclass
class BackgroundCase:
    """A real CT with inserted nodules: ``image`` (int16 HU, the background's geometry), ``label`` (uint8)."""

    image: sitk.Image
    label: sitk.Image
    nodules: list[Nodule]


def background_statistics(hu: np.ndarray, air: np.ndarray) -> dict[str, float]:
    """HU levels of a scan: soft tissue (median of [-100, 150] HU), aerated lung (median of the lung air) and
    noise (robust sigma of the lung parenchyma minus its 3-voxel median, times the factor that makes the
    difference of a noise field and its median filter unbiased, about 1.1 for correlated CT noise)."""
    soft = hu[(hu > -100) & (hu < 150)]
    parenchyma = air & (hu < -600)
    residual = (hu - ndimage.median_filter(hu, size=3))[parenchyma]
    mad = float(np.median(np.abs(residual - np.median(residual)))) if residual.size else 10.0
    return {"soft_tissue_hu": float(np.median(soft)) if soft.size else 40.0,
            "lung_hu": float(np.median(hu[air])) if air.any() else -850.0,
            "noise_hu": max(1.0, 1.4826 * mad * 1.1)}


def _inside(mask: np.ndarray, geometry: Geometry, mm: np.ndarray) -> np.ndarray:
    """``mask`` (x, y, z) at physical points ``mm`` (N, 3), nearest voxel; False outside the grid."""
    ijk = np.rint(geometry.lps_to_index(mm)).astype(np.int64)
    ok = np.all((ijk >= 0) & (ijk < np.asarray(mask.shape)), axis=1)
    out = np.zeros(len(mm), bool)
    out[ok] = mask[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]]
    return out


def place_nodules(region: np.ndarray, vessels: np.ndarray, geometry: Geometry, rng: np.random.Generator,
                  n: int, diameter_mm: tuple[float, float]) -> list[Nodule]:
    """Up to ``n`` non-overlapping nodules inside ``region`` (the solid lungs, x, y, z) at the three sites."""
    candidates = np.argwhere(region)
    vessel_idx = np.argwhere(vessels)
    if len(candidates) == 0:
        return []
    nodules: list[Nodule] = []
    for _ in range(4000):
        if len(nodules) >= n:
            break
        lo, hi = diameter_mm
        diam = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        r = diam / 2.0
        site = str(rng.choice(NODULE_SITES, p=[0.4, 0.3, 0.3]))
        if site == "juxtavascular" and len(vessel_idx):
            v = geometry.index_to_lps(vessel_idx[int(rng.integers(len(vessel_idx)))].astype(float))
            u = rng.normal(size=3)
            center = v + u / np.linalg.norm(u) * (r + 0.5)
        else:
            center = geometry.index_to_lps(candidates[int(rng.integers(len(candidates)))].astype(float))
        u = rng.normal(size=(200, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        inside = float(_inside(region, geometry, center + u * r * 1.15).mean())
        if not _inside(region, geometry, center[None])[0]:
            continue
        if site == "juxtapleural":
            if not 0.65 <= inside < 0.95:
                continue
        elif inside < 0.999:
            continue
        if any(np.linalg.norm(center - np.asarray(o.center_mm)) < r + o.diameter_mm / 2 + 4 for o in nodules):
            continue
        kind = str(rng.choice(NODULE_KINDS, p=[0.6, 0.2, 0.2]))
        shape = str(rng.choice(NODULE_SHAPES, p=[0.5, 0.3, 0.2])) if diam >= 6 else "spherical"
        nodules.append(Nodule(tuple(float(c) for c in center), diam, kind, shape, site))
    return nodules


def render_nodules(hu: np.ndarray, region: np.ndarray, geometry: Geometry, nodules: list[Nodule],
                   stats: dict[str, float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``nodules`` into ``hu`` (float32, x, y, z; modified copy returned) with the label (uint8)."""
    img = hu.astype(np.float32, copy=True)
    label = np.zeros(hu.shape, np.uint8)
    vox_mm = float(min(geometry.spacing))
    vox_vol = float(np.prod(geometry.spacing))
    for nod in nodules:
        reach = nod.diameter_mm + 2.0  # spicules reach beyond the radius
        c = np.asarray(nod.center_mm)
        corners = np.array([[c[0] + sx * reach, c[1] + sy * reach, c[2] + sz * reach]
                            for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        ijk = geometry.lps_to_index(corners)
        lo = np.clip(np.floor(ijk.min(0)).astype(int), 0, np.asarray(hu.shape) - 1)
        hi = np.clip(np.ceil(ijk.max(0)).astype(int) + 1, 1, np.asarray(hu.shape))
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1)
        mm = geometry.index_to_lps(grid.reshape(-1, 3).astype(float)).reshape(*grid.shape[:3], 3)
        x, y, z = mm[..., 0], mm[..., 1], mm[..., 2]
        d = nodule_signed_distance(nod, nodule_params(nod, rng), x, y, z)
        occ = occupancy(d, vox_mm) * region[box]
        solid = stats["soft_tissue_hu"] + rng.normal(0, 8)
        ggo = stats["lung_hu"] + GGO_ABOVE_LUNG_HU + rng.normal(0, 30)
        if nod.kind == "solid":
            target = np.float32(solid)
        elif nod.kind == "ground-glass":
            target = np.float32(ggo)
        else:  # part-solid: ground glass with a solid core of half the radius
            dc = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
            core = occupancy(dc - nod.diameter_mm / 4.0, vox_mm)
            target = (ggo * (1 - core) + solid * core).astype(np.float32)
        noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, occ.shape).astype(np.float32), 0.7)
        noise *= stats["noise_hu"] / max(float(noise.std()), 1e-6)
        img[box] = img[box] * (1 - occ) + (target + noise) * occ
        inside = occ >= 0.5
        label[box] |= inside.astype(np.uint8)
        nod.volume_mm3 = float(inside.sum() * vox_vol)
    return img, label


@dataclass
class Background:
    """A real CT analysed once for any number of cases: HU (float32, x, y, z) on ``geometry``, the lungs without
    their pleural rim (where nodules may be drawn), lung vessels, and the scan's HU levels."""

    hu: np.ndarray
    geometry: Geometry
    region: np.ndarray
    vessels: np.ndarray
    stats: dict[str, float]
    source: str


def analyse_background(image: sitk.Image, source: str = "") -> Background:
    """Find the lungs, vessels and HU levels of the real CT ``image``; :class:`InputError` when it shows no lungs."""
    geometry = Geometry.from_sitk(image)
    hu = sitk_to_xyz_array(image).astype(np.float32)
    axis = axial_axis(geometry.direction)
    air = lung_air(hu, geometry.spacing, -500.0, axis)
    if not air.any():
        raise InputError(source or "background", "shows no lungs to put nodules in (a chest CT is needed)")
    region = lung_region(hu, geometry.spacing, -500.0, 10.0, resolution_mm=0.0, axis=axis, rim_mm=0.0)
    deep = ndimage.binary_erosion(air, iterations=1)
    vessels = region & (hu > VESSEL_HU) & ndimage.binary_dilation(deep, iterations=2)
    return Background(hu, geometry, region, vessels, background_statistics(hu, air), source or "background")


def insert_nodules(background: Background, seed: int, n_nodules: tuple[int, int] = (2, 4),
                   diameter_mm: tuple[float, float] = (3.0, 30.0)) -> BackgroundCase:
    """Synthetic nodules in the lungs of an analysed real CT: a new image (int16, the background's geometry),
    its label and the nodules' ground truth. :class:`InputError` when no nodule of the sizes fits."""
    rng = np.random.default_rng(seed)
    g = background.geometry
    n = int(rng.integers(n_nodules[0], n_nodules[1] + 1))
    nodules = place_nodules(background.region, background.vessels, g, rng, n, diameter_mm)
    if not nodules:
        raise InputError(background.source, "has lungs too small for the requested nodule sizes")
    img, label = render_nodules(background.hu, background.region, g, nodules, background.stats, rng)
    out = xyz_array_to_sitk(np.clip(np.rint(img), -32768, 32767).astype(np.int16), g)  # the scan, unclipped
    return BackgroundCase(out, xyz_array_to_sitk(label, g), nodules)
