"""Preprocessing transforms (array/dictionary pairs) and the configured transform chains."""

from monai_pipeline.transforms.array import CTNormalize, HUThreshold, foreground_intensity_stats
from monai_pipeline.transforms.dictionary import CheckGeometryd, CTNormalized, LoadCTd
from monai_pipeline.transforms.pipeline import (
    prediction_transforms,
    preprocess_transforms,
    train_transforms,
    val_transforms,
)

__all__ = ["CTNormalize", "CTNormalized", "CheckGeometryd", "HUThreshold", "LoadCTd", "foreground_intensity_stats",
           "prediction_transforms", "preprocess_transforms", "train_transforms", "val_transforms"]
