"""Array transform over the post-processing steps (:mod:`~monai_pipeline.postprocess.steps`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Transform

from monai_pipeline.io.geometry import spacing_from_affine
from monai_pipeline.postprocess.steps import check_steps, postprocess_array, steps_from_mapping


class PostprocessMask(Transform):
    """The post-processing steps on a channel-first ``(1, X, Y, Z)`` mask.

    Args:
        steps: ``{step name: settings}`` in order, as in ``postprocess.steps`` (steps that need the CT, such as
            the lung filter, cannot run here: a bare mask has no HU).
        connectivity: 6, 18 or 26.
        spacing: voxel size (mm); taken from the MetaTensor's affine when the input has one.
    """

    def __init__(self, steps: Mapping[str, Mapping[str, Any]], connectivity: int = 26,
                 spacing: Sequence[float] | None = None):
        if connectivity not in (6, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
        self.post = steps_from_mapping(steps, connectivity)
        check_steps(self.post)
        self.spacing = spacing

    def __call__(self, img):
        spacing = spacing_from_affine(img.affine) if isinstance(img, MetaTensor) else self.spacing
        if spacing is None:
            raise ValueError("spacing must be given for inputs without an affine")
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        out = postprocess_array(arr[0], spacing, self.post)[None]
        if isinstance(img, MetaTensor):
            return MetaTensor(torch.as_tensor(out), meta=img.meta)
        return torch.as_tensor(out) if isinstance(img, torch.Tensor) else out
