"""Post-processing of saved masks (the ``postprocess`` verb): read each mask (and its CT), run the configured
steps, write the mask and its lesion table as ``infer`` writes them."""

from __future__ import annotations

from pathlib import Path

from monai_pipeline.config import PipelineConfig, load_config
from monai_pipeline.errors import InputError
from monai_pipeline.inference.export import Prediction, write_prediction
from monai_pipeline.io.geometry import sitk_to_xyz_array
from monai_pipeline.io.paths import case_id_from_path
from monai_pipeline.io.reader import read_ct, read_label
from monai_pipeline.model_file import model_config
from monai_pipeline.postprocess import lesion_table, postprocess_case
from monai_pipeline.postprocess.steps import needs_hu


def postprocess_settings(model: str | Path | None = None, config: str | Path | None = None,
                         overrides: dict | None = None) -> PipelineConfig:
    """The configuration whose ``postprocess`` section is applied: the model file's, ``config`` merged over the
    defaults, or the defaults; then ``overrides`` (a ``postprocess`` section overlay) merged over it."""
    cfg = model_config(model) if model else load_config(config)
    return cfg.merged({"postprocess": overrides or {}})


def postprocess_files(masks: list[Path], images: list[Path] | None, out: str | Path,
                      cfg: PipelineConfig) -> list[Prediction]:
    """Each mask of ``masks`` (with the CT of the same position in ``images``, on the same grid) post-processed
    with ``cfg.postprocess`` and written into ``out``; refused before any work when a step needs the CTs and
    none are given, or when there is not one CT per mask."""
    if images and len(images) != len(masks):
        raise InputError(None, f"--image must give one CT per mask ({len(masks)}), got {len(images)}")
    wanting = needs_hu(cfg.postprocess)
    if wanting and not images:
        raise InputError(masks[0], f"the post-processing step(s) {', '.join(wanting)} need the CT of each mask",
                         hint=f"give --image (one per mask, same order) or --no-{wanting[0].replace('_', '-')}")
    results = []
    for i, path in enumerate(masks):
        vol = read_label(path)
        geometry, hu = vol.geometry, None
        if images:
            img = read_ct(images[i])
            if not img.geometry.matches(geometry):
                raise InputError(images[i], f"grid differs from the mask {path}")
            hu = sitk_to_xyz_array(img.image)
            geometry = img.geometry  # the CT's own grid (a NIfTI mask header holds it in float32 only)
        mask = postprocess_case(sitk_to_xyz_array(vol.image), hu, geometry, cfg)
        pred = Prediction(case_id_from_path(path), mask, geometry,
                          lesion_table(mask, geometry, hu, cfg.postprocess.connectivity),
                          connectivity=cfg.postprocess.connectivity, seg_segments=cfg.inference.seg_segments)
        write_prediction(pred, out)
        results.append(pred)
    return results
