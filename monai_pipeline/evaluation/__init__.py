"""Evaluation: per-case metrics, bootstrap summaries, LUNA16-style detection, reader agreement, the report.

Conventions are in :mod:`.metrics` and ``docs/evaluation.md``; :func:`evaluate_folder` is what
``monai-pipeline evaluate`` runs.
"""

from monai_pipeline.evaluation.detection import (
    FP_RATES,
    Finding,
    ScanDetections,
    cpm,
    froc_curve,
    match_scan,
    sensitivity_at,
)
from monai_pipeline.evaluation.evaluate import evaluate_folder, format_table, headline, select_cases
from monai_pipeline.evaluation.metrics import (
    METRICS,
    case_metrics,
    confusion,
    distance_metrics,
    lesion_metrics,
    overlap_metrics,
    surface_distances,
    surface_points_mm,
)
from monai_pipeline.evaluation.readers import nodule_agreement
from monai_pipeline.evaluation.stats import bootstrap_ci, dumps_strict, json_safe, summarize

__all__ = ["FP_RATES", "METRICS", "Finding", "ScanDetections", "bootstrap_ci", "case_metrics", "confusion", "cpm",
           "distance_metrics", "dumps_strict", "evaluate_folder", "format_table", "froc_curve", "headline",
           "json_safe", "lesion_metrics", "match_scan", "nodule_agreement", "overlap_metrics", "select_cases",
           "sensitivity_at", "summarize", "surface_distances", "surface_points_mm"]
