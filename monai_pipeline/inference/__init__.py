"""Inference: the predictor, the one per-case export step, and the batch runner.

``Predictor`` (read -> preprocess -> probabilities) -> :func:`export_prediction` (mask on the input grid,
post-processing, lesion table) -> :func:`write_prediction`; :func:`run_batch` adds resume, sharding and
failure reports. The bundle's inference runs the same export step through :class:`ExportPredictiond`.
"""

from monai_pipeline.inference.batch import BatchSummary, run_batch, shard_cases
from monai_pipeline.inference.case import Case, CaseOptions
from monai_pipeline.inference.export import (
    ExportPredictiond,
    Prediction,
    export_prediction,
    resample_to_grid,
    write_prediction,
)
from monai_pipeline.inference.inputs import cases_from_inputs, cases_from_manifest
from monai_pipeline.inference.predictor import Predictor, file_sha256, prediction_provenance

__all__ = ["BatchSummary", "Case", "CaseOptions", "ExportPredictiond", "Prediction", "Predictor", "cases_from_inputs",
           "cases_from_manifest",
           "export_prediction", "file_sha256", "prediction_provenance", "resample_to_grid",
           "run_batch", "shard_cases", "write_prediction"]
