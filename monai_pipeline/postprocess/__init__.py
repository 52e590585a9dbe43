"""Post-processing of predicted masks (array/dictionary transforms) and per-lesion measurements."""

from monai_pipeline.postprocess.array import (
    PostprocessMask,
    binary_close,
    binary_open,
    fill_holes,
    keep_components_in_region,
    keep_largest_component,
    label_components,
    lung_filter,
    postprocess_case,
    postprocess_from_config,
    postprocess_mask,
    remove_small_components,
)
from monai_pipeline.postprocess.dictionary import PostprocessMaskd
from monai_pipeline.postprocess.lesions import LESION_FIELDS, lesion_table, write_lesion_csv

__all__ = ["LESION_FIELDS", "PostprocessMask", "PostprocessMaskd", "binary_close", "binary_open", "fill_holes",
           "keep_components_in_region", "keep_largest_component", "label_components", "lung_filter", "postprocess_case", "lesion_table", "postprocess_from_config",
           "postprocess_mask", "remove_small_components", "write_lesion_csv"]
