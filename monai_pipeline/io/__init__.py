"""CT input/output: SimpleITK reading (NIfTI, NRRD, MHA, DICOM file or series), geometry, atomic writing, the
prediction folder's layout and the mask formats.

Names are imported on first use: the mask-format registry (``io.formats``) feeds the CLI's choices, and the
reader pulls in MONAI (about 5 s), which ``monai-pipeline --help`` does not need.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Geometry": "geometry", "sitk_to_xyz_array": "geometry", "xyz_array_to_sitk": "geometry",
    "CTVolume": "reader", "ReadOptions": "reader", "SimpleITKReader": "reader", "read_ct": "reader",
    "read_label": "reader", "volume_meta": "reader",
    "atomic_path": "writer", "atomic_write": "writer", "atomic_write_text": "writer", "write_image": "writer",
    "write_mask": "writer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"monai_pipeline.io.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'monai_pipeline.io' has no attribute {name!r}")
