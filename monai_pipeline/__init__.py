"""monai-pipeline: CT volumes in, geometry-exact 3D segmentation masks out.

Stages live in one module each: :mod:`io`, :mod:`data`, :mod:`transforms`, :mod:`networks`, :mod:`training`,
:mod:`inference`, :mod:`postprocess`, :mod:`evaluation`, :mod:`lidc`, :mod:`cli`; :mod:`config` is the one
typed configuration. The Python API::

    from monai_pipeline import segment, load_config, Predictor
    result = segment("scan.nii.gz", "run/model.pt", out="masks")

Names are imported on first use, so ``import monai_pipeline`` (and ``monai-pipeline --help``) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.4.0"

_EXPORTS = {
    "segment": "monai_pipeline.api",
    "Predictor": "monai_pipeline.inference",
    "Prediction": "monai_pipeline.inference",
    "run_batch": "monai_pipeline.inference",
    "load_config": "monai_pipeline.config",
    "PipelineConfig": "monai_pipeline.config",
    "read_ct": "monai_pipeline.io",
    "ReadOptions": "monai_pipeline.io",
    "train": "monai_pipeline.training",
    "evaluate_folder": "monai_pipeline.evaluation",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'monai_pipeline' has no attribute {name!r}")
