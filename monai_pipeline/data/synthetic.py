"""Synthetic chest CT with lung nodules: the project's embedded data set.

Anatomy is defined analytically in millimetres (LPS, relative to the volume centre) and rasterised on the
voxel grid, so every structure, and above all every nodule, is known in physical space independently of how
the volume is stored. Values are Hounsfield units (int16); the label is 1 inside nodules, 0 elsewhere.

Orientation variants (all stored without resampling, except ``oblique``) let tests check that geometry
survives every path: ``axial_hf`` (identity LPS direction), ``axial_ff`` (feet first), ``prone``, ``flipped_rows``,
``left_handed`` (NIfTI only), ``oblique`` (rotated grid, resampled).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from monai_pipeline.io.geometry import Geometry, sitk_to_xyz_array, xyz_array_to_sitk

logger = logging.getLogger(__name__)

AIR_HU, LUNG_HU, FAT_HU, MUSCLE_HU, BLOOD_HU = -1000.0, -850.0, -100.0, 45.0, 40.0
BONE_CORTEX_HU, BONE_MARROW_HU = 700.0, 250.0
SOLID_HU, GGO_HU = 30.0, -560.0
NODULE_KINDS = ("solid", "part-solid", "ground-glass")
NODULE_SHAPES = ("spherical", "lobulated", "spiculated")
NODULE_SITES = ("interior", "juxtapleural", "juxtavascular")
DIRECTIONS = {
    "axial_hf": np.eye(3),
    "axial_ff": np.diag([-1.0, 1.0, -1.0]),
    "prone": np.diag([-1.0, -1.0, 1.0]),
    "flipped_rows": np.diag([1.0, -1.0, -1.0]),
    "left_handed": np.diag([1.0, 1.0, -1.0]),
}
ORIENTATIONS = (*DIRECTIONS, "oblique")


@dataclass
class Nodule:
    """Ground truth of one nodule: centre (mm, LPS), nominal diameter (mm), and its type."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str
    shape: str
    site: str
    volume_mm3: float = 0.0


@dataclass
class SynthConfig:
    """Size of the generated volumes.

    matrix: in-plane size (voxels, square). ``spacing_xy``/``spacing_z`` are ranges (mm) sampled per case,
    ``extent_z_mm`` the cranio-caudal coverage. Nodule diameters are sampled in ``diameter_mm`` (mm).
    """

    matrix: int = 512
    spacing_xy: tuple[float, float] = (0.6, 0.9)
    spacing_z: tuple[float, float] = (1.0, 2.5)
    extent_z_mm: float = 300.0
    n_nodules: tuple[int, int] = (1, 4)
    diameter_mm: tuple[float, float] = (3.0, 30.0)
    orientations: tuple[str, ...] = ORIENTATIONS
    noise_hu: float = 20.0


@dataclass
class SynthCase:
    case_id: str
    image: sitk.Image  # int16 HU
    label: sitk.Image  # uint8
    nodules: list[Nodule] = field(default_factory=list)
    orientation: str = "axial_hf"
    lung_mask: np.ndarray | None = None  # (x, y, z), same grid as image


def _capsule_distance(px, py, pz, a, b):
    """Distance (mm) of points to the segment a-b (arrays broadcast)."""
    ab = b - a
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / max(float(ab @ ab), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((px - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (pz - a[2] - t * ab[2]) ** 2)


class _Phantom:
    """Analytic chest, in mm around the volume centre: x to the patient's left, y posterior, z superior."""

    def __init__(self, rng: np.random.Generator, half_width: float, height: float):
        self.rng = rng
        self.a = half_width  # body half width, mm
        self.b = half_width * rng.uniform(0.62, 0.72)  # body half depth, mm
        self.h = height
        self.fat = rng.uniform(0.04, 0.08) * self.a
        self.lung_c = [(s * 0.44 * self.a, -0.04 * self.b) for s in (-1, 1)]
        self.lung_ab = (0.34 * self.a, 0.74 * self.b)
        self.z_top, self.z_base = 0.46 * height, -0.40 * height
        self.heart = (0.12 * self.a, -0.30 * self.b, -0.18 * height, 0.30 * self.a, 0.42 * self.b, 0.22 * height)
        self.rib_period = rng.uniform(22.0, 28.0)
        self.rib_phase = rng.uniform(0, self.rib_period)

    def body(self, x, y, z):
        return (x / self.a) ** 2 + (y / self.b) ** 2 <= 1.0

    def lung(self, x, y, z):
        """Boolean lung mask at points (mm); two ellipsoidal lungs with apex, diaphragm dome and heart notch."""
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=bool)
        la, lb = self.lung_ab
        zt, zb = self.z_top, self.z_base
        frac = np.clip((zt - z) / (0.35 * self.h), 0.0, 1.0)  # apex taper
        scale = np.sqrt(frac)
        for cx, cy in self.lung_c:
            r2 = ((x - cx) / (la * np.maximum(scale, 1e-3))) ** 2 + ((y - cy) / (lb * np.maximum(scale, 1e-3))) ** 2
            dome = zb + 0.22 * self.h * np.clip(1.0 - ((x - cx) / la) ** 2 - ((y - cy) / lb) ** 2, 0, 1)
            out |= (r2 <= 1.0) & (z <= zt) & (z >= dome)
        hx, hy, hz, ha, hb, hc = self.heart
        heart = ((x - hx) / ha) ** 2 + ((y - hy) / hb) ** 2 + ((z - hz) / hc) ** 2 <= 1.0
        return out & ~heart

    def hilum(self, side: int) -> np.ndarray:
        """Root of the vessel tree: at the mediastinal border of the lung, where the lobar vessels enter."""
        cx, cy = self.lung_c[side]
        la = self.lung_ab[0]
        return np.array([np.sign(cx) * (abs(cx) - la * 0.95), cy + 0.05 * self.b, 0.05 * self.h])


def _vessel_tree(ph: _Phantom, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Branching segments (start mm, end mm, radius mm) from each hilum into its lung."""
    segs = []
    for side in (0, 1):
        root = ph.hilum(side)
        outward = np.array([-1.0 if side == 0 else 1.0, 0.0, 0.0])
        stack = []
        for d in (outward + [0, 0, 0.9], outward + [0, 0, -0.9], outward + [0, 0.6, 0], outward + [0, -0.6, 0.2]):
            stack.append((root, d / np.linalg.norm(d), ph.a * 0.16, rng.uniform(3.5, 5.0), 0))
        while stack:
            p, d, length, r, depth = stack.pop()
            q = p + d * length
            segs.append((p, q, r))
            if depth >= 6 or r < 0.5:
                continue
            for _ in range(2):
                nd = d + rng.normal(0, 0.45, 3)
                nd /= np.linalg.norm(nd)
                stack.append((q, nd, length * rng.uniform(0.7, 0.85), r * rng.uniform(0.68, 0.8), depth + 1))
    return segs


def occupancy(signed_dist_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction from a signed distance (negative inside), linear over one voxel."""
    return np.clip(0.5 - signed_dist_mm / voxel_mm, 0.0, 1.0).astype(np.float32)


def nodule_signed_distance(nod: Nodule, rng_state: dict, x, y, z) -> np.ndarray:
    """Approximate signed distance (mm) to the nodule surface, negative inside."""
    c = np.asarray(nod.center_mm)
    r = nod.diameter_mm / 2.0
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    d = np.sqrt(dx * dx + dy * dy + dz * dz) - r
    if nod.shape == "lobulated":
        core = np.sqrt(dx * dx + dy * dy + dz * dz) - 0.7 * r
        for off, rr in zip(rng_state["lobes"], rng_state["lobe_r"], strict=True):
            lobe = np.sqrt((dx - off[0] * r) ** 2 + (dy - off[1] * r) ** 2 + (dz - off[2] * r) ** 2) - rr * r
            core = np.minimum(core, lobe)
        d = core
    elif nod.shape == "spiculated":
        d = np.sqrt(dx * dx + dy * dy + dz * dz) - 0.8 * r
        for u, ln in zip(rng_state["spikes"], rng_state["spike_len"], strict=True):
            a = c + u * 0.6 * r
            b = c + u * (0.8 + ln) * r
            spike = _capsule_distance(x, y, z, a, b) - max(0.7, 0.08 * r)
            d = np.minimum(d, spike)
    return d


def nodule_params(nod: Nodule, rng: np.random.Generator) -> dict:
    def unit(n):
        v = rng.normal(size=(n, 3))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    n_lobes = int(rng.integers(3, 6))
    n_spikes = int(rng.integers(5, 10))
    return {
        "lobes": unit(n_lobes) * rng.uniform(0.35, 0.5, (n_lobes, 1)),
        "lobe_r": rng.uniform(0.45, 0.6, n_lobes),
        "spikes": unit(n_spikes),
        "spike_len": rng.uniform(0.3, 0.7, n_spikes),
    }


def _place_nodules(ph: _Phantom, rng: np.random.Generator, cfg: SynthConfig, vessels, n: int) -> list[Nodule]:
    nodules: list[Nodule] = []
    la, lb = ph.lung_ab
    tries = 0
    while len(nodules) < n and tries < 4000:
        tries += 1
        lo, hi = cfg.diameter_mm
        diam = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        r = diam / 2
        site = str(rng.choice(NODULE_SITES, p=[0.5, 0.25, 0.25]))
        if site == "juxtavascular":
            p, q, vr = vessels[int(rng.integers(len(vessels)))]
            if vr > 2.5:
                continue
            t = rng.uniform(0.2, 0.8)
            axis = q - p
            perp = np.cross(axis, rng.normal(size=3))
            perp /= np.linalg.norm(perp) + 1e-9
            center = p + t * axis + perp * (r + vr * 0.5)
        else:
            side = int(rng.integers(2))
            cx, cy = ph.lung_c[side]
            center = np.array([cx + rng.uniform(-0.8, 0.8) * la, cy + rng.uniform(-0.8, 0.8) * lb,
                               rng.uniform(ph.z_base + 0.2 * ph.h, ph.z_top - 0.1 * ph.h)])
        # fraction of a ball of radius r(1+margin) inside the lung decides the site
        u = rng.normal(size=(160, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        shell = center + u * r * 1.15
        inside_frac = float(ph.lung(shell[:, 0], shell[:, 1], shell[:, 2]).mean())
        if not ph.lung(*center):
            continue
        if site == "juxtapleural":
            if not (0.65 <= inside_frac < 0.95):
                continue
        elif inside_frac < 0.999:
            continue
        if any(np.linalg.norm(center - np.asarray(o.center_mm)) < (r + o.diameter_mm / 2 + 4) for o in nodules):
            continue
        kind = str(rng.choice(NODULE_KINDS, p=[0.6, 0.2, 0.2]))
        shape = str(rng.choice(NODULE_SHAPES, p=[0.5, 0.3, 0.2])) if diam >= 6 else "spherical"
        nodules.append(Nodule(tuple(float(v) for v in center), diam, kind, shape, site))
    return nodules


def _grid(shape, spacing, offset=(0.0, 0.0, 0.0)):
    """mm coordinates (phantom frame) of a canonical (identity direction) grid whose centre lies at ``offset``
    (mm) from the phantom's centre, as broadcastable arrays."""
    return [((np.arange(n) - (n - 1) / 2.0) * s + o).astype(np.float32).reshape([-1 if i == k else 1 for i in range(3)])
            for k, (n, s, o) in enumerate(zip(shape, spacing, offset, strict=True))]


def add_scanner_noise(img: np.ndarray, rng: np.random.Generator, noise_hu: float) -> np.ndarray:
    """Add spatially correlated Gaussian noise of standard deviation ``noise_hu`` (HU) in place, clip to the
    CT range (-1024..3071 HU) and return ``img`` (float32, any axis order)."""
    if noise_hu > 0:
        noise = rng.normal(0.0, 1.0, size=img.shape).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=0.7)
        noise *= noise_hu / max(float(noise.std()), 1e-6)
        img += noise
    np.clip(img, -1024, 3071, out=img)
    return img


def chest_anatomy(shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator,
                  offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0), height_mm: float | None = None,
                  cover_mm: list[np.ndarray] | None = None,
                  max_shift_mm: float = 30.0) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A noise-free phantom chest without nodules on a canonical (identity direction, x y z) grid of ``shape``
    voxels and ``spacing`` mm whose centre lies ``offset_mm`` from the phantom's centre; ``height_mm`` is the
    phantom's cranio-caudal size (default: the grid's).

    ``cover_mm``: point sets (each N x 3, mm from the grid's centre, x y z) that should lie in the lungs, such as
    the voxels of nodules drawn by readers in a real chest: the phantom is then shifted in-plane (x, y) by up to
    ``max_shift_mm``, on a 5 mm lattice, to hold as many of them as possible (:func:`lung_shift`).

    Returns HU (float32), the lung mask (bool) and the in-plane shift applied (mm, x y)."""
    half_width = 0.47 * shape[0] * spacing[0]
    ph = _Phantom(rng, half_width=half_width * rng.uniform(0.9, 1.0), height=height_mm or shape[2] * spacing[2])
    vessels = _vessel_tree(ph, rng)
    shift = lung_shift(ph, cover_mm, offset_mm, max_shift_mm) if cover_mm else (0.0, 0.0)
    offset = (offset_mm[0] + shift[0], offset_mm[1] + shift[1], offset_mm[2])
    img, _, lung = _render(ph, shape, spacing, vessels, [], rng, noise_hu=0.0, offset=offset)
    return img, lung, shift


#: a point set counts as held by the lungs when at least this fraction of its points lies in them
COVERED_FRACTION = 0.95


def lung_shift(ph: _Phantom, cover_mm: list[np.ndarray], offset_mm: tuple[float, float, float],
               max_shift_mm: float, step_mm: float = 5.0) -> tuple[float, float]:
    """In-plane shift (mm, x y) of the grid relative to the phantom, on a ``step_mm`` lattice within
    ``max_shift_mm`` per axis, that puts the most point sets of ``cover_mm`` (each N x 3, mm from the grid's
    centre) at least :data:`COVERED_FRACTION` inside the phantom's lungs; ties go to the larger total fraction
    (to 0.001), then to the smaller shift. Deterministic; no random draws."""
    n = int(max_shift_mm // step_mm)
    steps = [k * step_mm for k in range(-n, n + 1)]
    best_key, best = None, (0.0, 0.0)
    for dx in steps:
        for dy in steps:
            fr = [float(ph.lung(p[:, 0] + (offset_mm[0] + dx), p[:, 1] + (offset_mm[1] + dy),
                                p[:, 2] + offset_mm[2]).mean()) for p in cover_mm]
            key = (sum(f >= COVERED_FRACTION for f in fr), round(sum(fr), 3), -(dx * dx + dy * dy))
            if best_key is None or key > best_key:
                best_key, best = key, (float(dx), float(dy))
    return best


def _render(ph: _Phantom, shape, spacing, vessels, nodules, rng, noise_hu,
            offset=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise the phantom on the canonical grid (centred ``offset`` mm from the phantom's centre): returns
    HU (float32), label (uint8), lung mask (bool)."""
    x, y, z = _grid(shape, spacing, offset)
    vox = float(min(spacing))
    body = ph.body(x, y, z)
    body = np.broadcast_to(body, shape)
    ell = np.sqrt((x / ph.a) ** 2 + (y / ph.b) ** 2)  # 1 at the skin
    img = np.full(shape, AIR_HU, dtype=np.float32)
    img[body] = FAT_HU
    muscle = np.broadcast_to(ell <= 1.0 - ph.fat / ph.a, shape)
    img[muscle] = MUSCLE_HU
    # ribs: bands just inside the muscle wall, descending anteriorly, periodic in z
    theta = np.arctan2(y, x)
    rib_z = (z - ph.rib_phase + 16.0 * np.cos(theta) + 6.0 * np.sin(2 * theta)) % ph.rib_period
    band = (np.abs(ell - (1.0 - 2.4 * ph.fat / ph.a)) < 4.5 / ph.a) & (y < 0.55 * ph.b)
    rib = band & (rib_z < 9.0)
    rib_core = rib & (np.abs(ell - (1.0 - 2.4 * ph.fat / ph.a)) < 2.5 / ph.a) & (rib_z > 1.5) & (rib_z < 7.5)
    img[np.broadcast_to(rib, shape)] = BONE_CORTEX_HU
    img[np.broadcast_to(rib_core, shape)] = BONE_MARROW_HU
    # spine (vertebral body + canal, discs) and sternum
    vb = (x ** 2 + (y - 0.62 * ph.b) ** 2) <= (0.13 * ph.a) ** 2
    vb_core = (x ** 2 + (y - 0.62 * ph.b) ** 2) <= (0.10 * ph.a) ** 2
    disc = ((z % 27.0) < 5.0)
    img[np.broadcast_to(vb, shape)] = BONE_CORTEX_HU
    img[np.broadcast_to(vb_core & ~disc, shape)] = BONE_MARROW_HU
    img[np.broadcast_to(vb_core & disc, shape)] = 80.0
    canal = (x ** 2 + (y - 0.85 * ph.b) ** 2) <= (0.055 * ph.a) ** 2
    img[np.broadcast_to(canal, shape)] = 15.0
    sternum = ((x / (0.09 * ph.a)) ** 2 + ((y + 0.9 * ph.b) / (0.05 * ph.b)) ** 2) <= 1.0
    img[np.broadcast_to(sternum, shape)] = 400.0
    aorta = ((x - 0.1 * ph.a) ** 2 + (y - 0.36 * ph.b) ** 2) <= (0.09 * ph.a) ** 2
    img[np.broadcast_to(aorta & (z < 0.3 * ph.h), shape)] = BLOOD_HU
    # lungs, with a gentle anterior-posterior gradient
    lung = ph.lung(x, y, z)
    lung_hu = LUNG_HU + 40.0 * np.clip(y / ph.b, -1, 1)
    img = np.where(lung, np.broadcast_to(lung_hu, shape), img).astype(np.float32)
    # vessels: capsules rendered in their bounding boxes, kept inside the lungs and mediastinum
    origin = np.array([-(n - 1) / 2.0 * s + o for n, s, o in zip(shape, spacing, offset, strict=True)])
    sp = np.asarray(spacing)
    for p, q, r in vessels:
        lo = np.floor((np.minimum(p, q) - r - 1 - origin) / sp).astype(int).clip(0, np.array(shape) - 1)
        hi = np.ceil((np.maximum(p, q) + r + 1 - origin) / sp).astype(int).clip(0, np.array(shape) - 1) + 1
        if np.any(hi - lo <= 0):
            continue
        sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        d = _capsule_distance(x[sl[0]], y[:, sl[1]], z[:, :, sl[2]], p, q) - r
        occ = occupancy(d, vox)
        region = img[sl]
        keep = lung[sl] if lung.shape == shape else lung
        occ = np.where(keep, occ, 0.0)
        img[sl] = region * (1 - occ) + BLOOD_HU * occ
    # nodules
    label = np.zeros(shape, dtype=np.uint8)
    vox_vol = float(np.prod(spacing))
    for nod in nodules:
        r = nod.diameter_mm / 2.0 * 2.0 + 2.0
        c = np.asarray(nod.center_mm)
        lo = np.floor((c - r - origin) / sp).astype(int).clip(0, np.array(shape) - 1)
        hi = np.ceil((c + r - origin) / sp).astype(int).clip(0, np.array(shape) - 1) + 1
        sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        params = nodule_params(nod, rng)
        d = nodule_signed_distance(nod, params, x[sl[0]], y[:, sl[1]], z[:, :, sl[2]])
        in_lung = lung[sl]
        occ = occupancy(d, vox) * in_lung
        if nod.kind == "solid":
            hu = SOLID_HU + rng.normal(0, 8)
            target = np.float32(hu)
        elif nod.kind == "ground-glass":
            target = np.float32(GGO_HU + rng.normal(0, 40))
        else:  # part-solid: ground glass with a solid core of half the radius
            dc = np.sqrt((x[sl[0]] - c[0]) ** 2 + (y[:, sl[1]] - c[1]) ** 2 + (z[:, :, sl[2]] - c[2]) ** 2)
            core = occupancy(dc - nod.diameter_mm / 4.0, vox)
            target = (GGO_HU * (1 - core) + SOLID_HU * core).astype(np.float32)
        region = img[sl]
        img[sl] = region * (1 - occ) + target * occ
        lab = (occ >= 0.5)
        label[sl] |= lab.astype(np.uint8)
        nod.volume_mm3 = float(lab.sum() * vox_vol)
    add_scanner_noise(img, rng, noise_hu)  # correlated noise (scanner-like)
    return img, label, np.broadcast_to(lung, shape).copy()


def _oblique_direction(rng: np.random.Generator) -> np.ndarray:
    ax, az = np.radians(rng.uniform(8, 20)) * rng.choice([-1, 1]), np.radians(rng.uniform(5, 15))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def reorient_exact(array_xyz: np.ndarray, geom: Geometry, direction: np.ndarray) -> tuple[np.ndarray, Geometry]:
    """Store the same physical content on a grid with a signed-permutation ``direction`` (no resampling).

    ``direction`` columns must be +-1 multiples of the columns of ``geom``'s direction (same axes order).
    """
    d0 = geom.direction_matrix
    arr = array_xyz
    origin = np.asarray(geom.origin, dtype=np.float64)
    for k in range(3):
        s = float(np.sign(direction[:, k] @ d0[:, k]))
        if s < 0:
            arr = np.flip(arr, axis=k)
            origin = origin + d0[:, k] * geom.spacing[k] * (geom.size[k] - 1)
    new = Geometry(geom.size, geom.spacing, tuple(origin), tuple(np.asarray(direction, float).reshape(-1)))
    return np.ascontiguousarray(arr), new


def generate_case(seed: int, cfg: SynthConfig | None = None, case_id: str | None = None,
                  orientation: str | None = None) -> SynthCase:
    """Generate one synthetic chest CT case (deterministic for a given ``seed`` and ``cfg``)."""
    cfg = cfg or SynthConfig()
    rng = np.random.default_rng(seed)
    sxy = float(round(rng.uniform(*cfg.spacing_xy), 4))
    sz = float(round(rng.uniform(*cfg.spacing_z), 3))
    nz = max(8, int(round(cfg.extent_z_mm / sz)))
    shape = (cfg.matrix, cfg.matrix, nz)
    spacing = (sxy, sxy, sz)
    half_width = 0.47 * cfg.matrix * sxy
    ph = _Phantom(rng, half_width=half_width * rng.uniform(0.9, 1.0), height=nz * sz)
    vessels = _vessel_tree(ph, rng)
    n = int(rng.integers(cfg.n_nodules[0], cfg.n_nodules[1] + 1))
    nodules = _place_nodules(ph, rng, cfg, vessels, n)
    img, label, lung = _render(ph, shape, spacing, vessels, nodules, rng, cfg.noise_hu)
    # canonical grid: identity direction, centre of the volume at a random table position
    centre = np.array([rng.uniform(-20, 20), rng.uniform(-30, 10), rng.uniform(-600, -100)])
    origin = centre - np.array([(n_ - 1) / 2.0 * s for n_, s in zip(shape, spacing, strict=True)])
    geom = Geometry(shape, spacing, tuple(float(v) for v in origin), tuple(np.eye(3).reshape(-1)))
    for nod in nodules:
        nod.center_mm = tuple(float(v) for v in np.asarray(nod.center_mm) + centre)
    orientation = orientation or str(rng.choice(cfg.orientations))
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    hu = np.rint(img).astype(np.int16)
    if orientation == "oblique":
        image = xyz_array_to_sitk(hu, geom)
        lab_img = xyz_array_to_sitk(label, geom)
        lung_img = xyz_array_to_sitk(lung.astype(np.uint8), geom)
        direction = _oblique_direction(rng)
        centre_phys = np.asarray(geom.origin) + np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0
        new_origin = centre_phys - direction @ (np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0)
        ref = Geometry(shape, spacing, tuple(new_origin), tuple(direction.reshape(-1))).empty_image(sitk.sitkInt16)
        image = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
        lab_img = sitk.Resample(lab_img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        lung_arr = sitk_to_xyz_array(sitk.Resample(lung_img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                   sitk.sitkUInt8)).astype(bool)
    else:
        direction = DIRECTIONS[orientation]
        hu_o, g = reorient_exact(hu, geom, direction)
        lab_o, _ = reorient_exact(label, geom, direction)
        lung_arr, _ = reorient_exact(lung, geom, direction)
        image = xyz_array_to_sitk(hu_o, g)
        lab_img = xyz_array_to_sitk(lab_o, g)
    return SynthCase(case_id=case_id or f"synth_{seed:04d}", image=image, label=lab_img, nodules=nodules,
                     orientation=orientation, lung_mask=lung_arr)


def nodules_to_json(nodules: list[Nodule]) -> list[dict]:
    return [asdict(n) for n in nodules]
