"""Post-processing of predicted masks: the configured list of steps (:mod:`.steps`), its array/dictionary
transforms, the operations the steps are made of (:mod:`.ops`), and per-lesion measurements (:mod:`.lesions`).

Names are imported on first use: the step registry feeds the CLI's flags, and the transforms pull in MONAI,
which ``monai-pipeline --help`` does not need.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "PostprocessMask": "array", "PostprocessMaskd": "dictionary",
    "LESION_FIELDS": "lesions", "lesion_table": "lesions", "write_lesion_csv": "lesions",
    "elongation": "ops", "principal_moments": "ops", "remove_elongated_components": "ops",
    "binary_close": "ops", "binary_open": "ops", "fill_holes": "ops", "keep_components_in_region": "ops",
    "keep_largest_component": "ops", "remove_small_components": "ops", "split_at_necks": "ops",
    "STEPS": "steps", "StepContext": "steps", "check_steps": "steps", "postprocess_array": "steps",
    "postprocess_case": "steps", "register_step": "steps",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"monai_pipeline.postprocess.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'monai_pipeline.postprocess' has no attribute {name!r}")
