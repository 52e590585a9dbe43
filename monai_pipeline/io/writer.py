"""Writing masks and images atomically, in the exact geometry of a reference image."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from monai_pipeline.io.geometry import Geometry, xyz_array_to_sitk

#: how ``monai-pipeline synth`` marks its phantoms (NIfTI ``descrip``, DICOM ``Manufacturer``); the reader
#: sets ``CTVolume.synthetic`` from it
SYNTHETIC_MARK = "monai-pipeline synthetic"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and rename it over ``path`` on success.

    The temporary file is ``.<name>.<random>.part<suffixes>``: hidden, never mistaken for an output, and
    attributable to its target (see :func:`stale_parts`).

    A crash or exception leaves ``path`` untouched (either the old file or nothing), never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def stale_parts(path: str | Path) -> list[Path]:
    """Temporary files left for ``path`` by a writer that was killed."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.part*")) if path.parent.is_dir() else []


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically (format from the suffix of ``path``)."""
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), compress))


def write_mask(mask_xyz: np.ndarray, geometry: Geometry, path: str | Path, description: str | None = None) -> Path:
    """Write a label array (x, y, z order) as uint8 NIfTI with exactly ``geometry`` (size, spacing, origin,
    direction of the input the user gave); ``description`` goes into the NIfTI ``descrip`` (80 characters)."""
    mask = np.asarray(mask_xyz)
    if tuple(mask.shape) != geometry.size:
        raise ValueError(f"mask shape must equal the reference size {geometry.size}, got {mask.shape}")
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise ValueError("mask labels must lie in 0..255")
    image = xyz_array_to_sitk(mask.astype(np.uint8, copy=False), geometry)
    if description:
        image.SetMetaData("ITK_FileNotes", description[:79])  # what ITK writes into the NIfTI descrip
    return write_image(image, path)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by ``None`` and numpy scalars made plain (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_strict(obj: Any) -> str:
    """JSON that strict parsers accept (no NaN/Infinity tokens)."""
    return json.dumps(json_safe(obj), indent=1, allow_nan=False)
