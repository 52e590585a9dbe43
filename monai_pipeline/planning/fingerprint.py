"""The dataset fingerprint the planner works from (nnU-Net's idea): per training case the voxel spacing and size,
the extent of the lung crop, foreground HU samples and the lesions' sizes, reduced to dataset statistics.

Axes are those of the RAS-oriented array the network sees (0 = x, 1 = y, 2 = z), in mm or voxels. Reading every
training image once is the slow part, so the fingerprint is cached beside the manifest
(``<manifest>.fingerprint.json``) and reused while the manifest and its files (size and modification time) are
unchanged. A fingerprint may also be written by hand from published metadata (``configs/lidc_fingerprint.json``):
the planner needs only the statistics.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from monai_pipeline.arrays import bounding_box, label_components
from monai_pipeline.data.manifest import load_manifest
from monai_pipeline.errors import InputError
from monai_pipeline.io.geometry import Geometry, axial_axis, sitk_to_xyz_array
from monai_pipeline.io.reader import read_ct, read_label
from monai_pipeline.io.writer import atomic_write_text
from monai_pipeline.lungs import lung_region_coarse

logger = logging.getLogger(__name__)

FINGERPRINT_FORMAT = "monai-pipeline-fingerprint/1"
#: foreground voxels sampled per case for the HU statistics (nnU-Net samples 10,000)
HU_SAMPLES_PER_CASE = 10_000


def ras_axes(geometry: Geometry) -> list[int]:
    """For each RAS axis (x, y, z), the input array axis that lies along it (the direction's dominant entry)."""
    d = np.abs(np.asarray(geometry.direction, float).reshape(3, 3))
    return [int(np.argmax(d[k])) for k in range(3)]


def case_fingerprint(entry: dict, body_threshold_hu: float = -500.0, seed: int = 0) -> dict[str, Any]:
    """One labelled case: ``spacing_mm`` and ``shape`` (RAS axes), ``lung_extent_mm`` (the lung crop's box, the
    whole scan when no lungs are found), ``hu_samples`` (foreground HU, at most :data:`HU_SAMPLES_PER_CASE`) and
    ``lesions`` (``volume_mm3`` and ``diameter_mm`` of an equal-volume sphere, per connected component)."""
    vol = read_ct(entry["image"])
    g = vol.geometry
    hu = sitk_to_xyz_array(vol.image)
    lab = sitk_to_xyz_array(read_label(entry["label"]).image) > 0
    axes = ras_axes(g)
    spacing = np.asarray(g.spacing, float)
    lungs = lung_region_coarse(hu, spacing, body_threshold_hu, axis=axial_axis(g.direction))
    box = bounding_box(lungs.small) if lungs.any() else None
    if box is None:
        extent = spacing * np.asarray(hu.shape)
    else:
        extent = np.array([(b.stop - b.start) * f for b, f in zip(box, lungs.factors, strict=True)]) * spacing
    values = hu[lab]
    if values.size > HU_SAMPLES_PER_CASE:
        values = np.random.default_rng(seed).choice(values, HU_SAMPLES_PER_CASE, replace=False)
    comps, n = label_components(lab)
    voxel_mm3 = float(np.prod(spacing))
    volumes = np.bincount(comps.ravel())[1:] * voxel_mm3 if n else np.zeros(0)
    return {"case_id": entry["case_id"], "spacing_mm": [float(spacing[a]) for a in axes],
            "shape": [int(hu.shape[a]) for a in axes], "lung_extent_mm": [float(extent[a]) for a in axes],
            "hu_samples": [round(float(v), 1) for v in values],
            "lesions": [{"volume_mm3": round(float(v), 2), "diameter_mm": round(float((6 * v / np.pi) ** (1 / 3)), 2)}
                        for v in volumes]}


def summarize(cases: list[dict]) -> dict[str, Any]:
    """Dataset statistics of case fingerprints: what :func:`~monai_pipeline.planning.planner.plan` reads."""
    if not cases:
        raise ValueError("no cases to fingerprint")
    spacing = np.array([c["spacing_mm"] for c in cases])
    shape = np.array([c["shape"] for c in cases])
    extent = np.array([c["lung_extent_mm"] for c in cases])
    hu = np.concatenate([np.asarray(c["hu_samples"], float) for c in cases])
    diam = np.array([le["diameter_mm"] for c in cases for le in c["lesions"]])
    if hu.size < 2 or diam.size == 0:
        raise ValueError("the training labels hold no foreground: nothing to plan for")
    return {
        "n_cases": len(cases),
        "spacing_mm": {"median": np.median(spacing, 0).tolist(), "p10": np.percentile(spacing, 10, 0).tolist(),
                       "p90": np.percentile(spacing, 90, 0).tolist()},
        "shape": {"median": np.median(shape, 0).tolist()},
        "lung_extent_mm": {"median": np.median(extent, 0).tolist(), "p90": np.percentile(extent, 90, 0).tolist()},
        "foreground_hu": {"mean": float(hu.mean()), "std": float(hu.std()), "p00_5": float(np.percentile(hu, 0.5)),
                          "p99_5": float(np.percentile(hu, 99.5))},
        "lesions": {"n": int(diam.size), "per_case": float(diam.size / len(cases)),
                    "diameter_mm": {"min": float(diam.min()), "median": float(np.median(diam)),
                                    "p95": float(np.percentile(diam, 95)), "max": float(diam.max())}},
    }


def _files_key(manifest: Path, entries: list[dict]) -> str:
    h = hashlib.sha256(manifest.read_bytes())
    for e in entries:
        for key in ("image", "label"):
            p = Path(e[key])
            st = p.stat() if p.is_file() else None
            h.update(f"{p}:{st.st_size if st else 'dir'}:{st.st_mtime_ns if st else 0}".encode())
    return h.hexdigest()


def dataset_fingerprint(manifest: str | Path, body_threshold_hu: float = -500.0, cache: bool = True,
                        progress: bool = False) -> dict[str, Any]:
    """The fingerprint of a manifest's labelled ``training`` cases (every fold): ``{"format", "source", "key",
    "cases": [...], "summary": {...}}``, read from the cache when it is current."""
    manifest = Path(manifest)
    entries = [e for e in load_manifest(manifest, "training") if e.get("label")]
    if not entries:
        raise InputError(manifest, "has no labelled training cases to plan from")
    key = _files_key(manifest, entries)
    cache_path = manifest.with_name(manifest.name + ".fingerprint.json")
    if cache and cache_path.is_file():
        try:
            cached = json.loads(cache_path.read_text())
            if cached.get("key") == key and cached.get("format") == FINGERPRINT_FORMAT:
                logger.info("%s: fingerprint read from the cache %s", manifest, cache_path)
                return cached
        except (OSError, json.JSONDecodeError):
            pass
    cases = []
    for i, e in enumerate(entries):
        if progress:
            logger.info("fingerprint %d/%d: %s", i + 1, len(entries), e["case_id"])
        cases.append(case_fingerprint(e, body_threshold_hu))
    fp = {"format": FINGERPRINT_FORMAT, "source": str(manifest), "key": key, "cases": cases,
          "summary": summarize(cases)}
    if cache:
        atomic_write_text(cache_path, json.dumps(fp))
    return fp


def read_fingerprint(path: str | Path) -> dict[str, Any]:
    """A fingerprint file (cached, or written from metadata): it must hold a ``summary``."""
    path = Path(path)
    try:
        fp = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(path, f"unreadable fingerprint ({err.__class__.__name__}: {err})") from err
    if not isinstance(fp, dict) or "summary" not in fp:
        raise InputError(path, "not a fingerprint (no 'summary')")
    return fp
