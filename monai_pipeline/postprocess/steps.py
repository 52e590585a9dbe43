"""Post-processing as a list of steps, run in the configured order.

A step is a pure function ``step(mask, ctx, **settings) -> mask``: ``mask`` is a boolean (x, y, z) crop of the
prediction on the input grid (C order), ``ctx`` a :class:`StepContext` (spacing in mm, the input's geometry and
HU, the lungs, the connectivity), and its settings are keyword-only arguments whose names are the keys of its
entry in ``postprocess.steps`` (``configs/default.yaml``)::

    postprocess:
      steps:
        remove_small: {enabled: true, min_volume_mm3: 10.0}

Adding a step is one function decorated with :func:`register_step` and one key in ``default.yaml`` (or any
overlay); ``infer``, the bundle, the Python API, ``postprocess`` and its command-line flags pick it up (as
nnU-Net's ``apply_postprocessing(seg, pp_fns, pp_fn_kwargs)`` runs a list of functions with keyword arguments).

:func:`postprocess_case` crops the mask once to its bounding box, widened by the largest radius a step may grow
it by (its ``reach``), so the cost follows the objects, not the volume.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_pipeline.arrays import bounding_box
from monai_pipeline.config import PipelineConfig, PostprocessConfig
from monai_pipeline.errors import ConfigError
from monai_pipeline.io.geometry import Geometry, axial_axis
from monai_pipeline.lungs import CoarseMask, lung_region_coarse
from monai_pipeline.postprocess.ops import (
    binary_close,
    binary_open,
    fill_holes,
    keep_components_in_region,
    keep_largest_component,
    remove_elongated_components,
    remove_small_components,
    split_at_necks,
)

logger = logging.getLogger(__name__)

#: grid (mm) on which the lung filter's region is computed: a region test ("mostly inside the lungs?"), not a
#: contour, so a coarse grid suffices (docs/performance.md)
LUNG_FILTER_RESOLUTION_MM = 3.0
#: the switch every step entry may carry besides its keyword arguments
ENABLED = "enabled"


@dataclass
class StepContext:
    """What a step may read besides the mask.

    Attributes:
        spacing: voxel size (mm) of the mask's axes (x, y, z).
        connectivity: 6, 18 or 26, for every connected-component operation.
        box: where the mask crop lies in the full input grid.
        geometry: the input grid (None for a bare array, e.g. the array transform).
        hu: the whole input volume in HU, (x, y, z) on ``geometry`` (None when not given).
        body_threshold_hu: HU above which a voxel is body, not air (``preprocessing.body_threshold_hu``).
    """

    spacing: tuple[float, float, float]
    connectivity: int = 26
    box: tuple[slice, ...] | None = None
    geometry: Geometry | None = None
    hu: np.ndarray | None = None
    body_threshold_hu: float = -500.0
    _lungs: dict[float, CoarseMask] = field(default_factory=dict, repr=False)

    def lungs(self, closing_mm: float) -> CoarseMask:
        """The lung region of the whole input (computed once per closing radius) on a coarse grid."""
        if self.hu is None or self.geometry is None:
            raise ValueError("this post-processing step needs the CT (HU) and its geometry")
        if closing_mm not in self._lungs:
            self._lungs[closing_mm] = lung_region_coarse(
                self.hu, self.geometry.spacing, self.body_threshold_hu, closing_mm,
                resolution_mm=LUNG_FILTER_RESOLUTION_MM, axis=axial_axis(self.geometry.direction))
        return self._lungs[closing_mm]


Step = Callable[..., np.ndarray]


@dataclass(frozen=True)
class StepSpec:
    """A registered step: its function, the keyword naming how far (mm) it may grow a mask beyond the mask's
    bounding box (``reach``), whether it reads the CT (``needs_hu``), and an optional check of its settings."""

    name: str
    fn: Step
    reach: str | None = None
    needs_hu: bool = False
    check: Callable[..., None] | None = None

    def keywords(self) -> dict[str, inspect.Parameter]:
        """The step's settings: its keyword-only parameters."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


#: every post-processing step by name
STEPS: dict[str, StepSpec] = {}


def register_step(name: str, reach: str | None = None, needs_hu: bool = False,
                  check: Callable[..., None] | None = None) -> Callable[[Step], Step]:
    """Decorator: register ``fn(mask, ctx, **settings)`` as the step ``name`` (see the module docstring)."""

    def add(fn: Step) -> Step:
        STEPS[name] = StepSpec(name, fn, reach, needs_hu, check)
        return fn

    return add


def _fraction(lung_min_fraction: float, **_: Any) -> None:
    if not 0 <= lung_min_fraction <= 1:
        raise ConfigError(f"postprocess.steps.lung_filter.lung_min_fraction must be in [0, 1], got {lung_min_fraction}")


@register_step("lung_filter", needs_hu=True, check=_fraction)
def lung_filter(mask: np.ndarray, ctx: StepContext, *, lung_closing_mm: float, lung_min_fraction: float,
                keep_without_lungs: bool = False) -> np.ndarray:
    """Drop components lying mostly outside the lungs: at least ``lung_min_fraction`` of a component must be in
    the lungs (:func:`~monai_pipeline.lungs.lung_region_coarse`, closed by ``lung_closing_mm`` so juxtapleural
    nodules count as inside). A scan where no lungs are found gets no lung-nodule candidates (an empty mask, one
    warning) unless ``keep_without_lungs``."""
    region = ctx.lungs(lung_closing_mm)
    if not region.any():
        if keep_without_lungs:
            logger.warning("no lungs found in this scan (not a chest CT?): every candidate kept "
                           "(keep_without_lungs)")
            return mask
        if mask.any():
            logger.warning("no lungs found in this scan (not a chest CT?): no lung-nodule candidates kept (empty "
                           "mask); --keep-without-lungs keeps them")
        return np.zeros_like(mask)
    box = ctx.box or tuple(slice(0, n) for n in mask.shape)
    return keep_components_in_region(mask, region.crop(box), lung_min_fraction, ctx.connectivity)


@register_step("closing", reach="closing_mm")
def closing(mask: np.ndarray, ctx: StepContext, *, closing_mm: float) -> np.ndarray:
    """Morphological closing with a ball of ``closing_mm`` (anisotropic spacing respected); 0 = off."""
    return binary_close(mask, ctx.spacing, closing_mm) if closing_mm > 0 else mask


@register_step("opening", reach="opening_mm")
def opening(mask: np.ndarray, ctx: StepContext, *, opening_mm: float) -> np.ndarray:
    """Morphological opening with a ball of ``opening_mm``; 0 = off."""
    return binary_open(mask, ctx.spacing, opening_mm) if opening_mm > 0 else mask


@register_step("fill_holes")
def fill_holes_step(mask: np.ndarray, ctx: StepContext) -> np.ndarray:
    """Fill cavities enclosed in 3D, each component inside its own bounding box."""
    return fill_holes(mask, ctx.connectivity)


@register_step("split_necks")
def split_necks(mask: np.ndarray, ctx: StepContext, *, min_depth_mm: float) -> np.ndarray:
    """Cut components at their necks, so that a part whose inscribed radius exceeds its narrowest passage to the
    rest by at least ``min_depth_mm`` is a lesion of its own (a nodule on a vessel); 0 = off."""
    return split_at_necks(mask, ctx.spacing, min_depth_mm, ctx.connectivity) if min_depth_mm > 0 else mask


@register_step("remove_small")
def remove_small(mask: np.ndarray, ctx: StepContext, *, min_volume_mm3: float) -> np.ndarray:
    """Drop components smaller than ``min_volume_mm3``; 0 = off."""
    return remove_small_components(mask, ctx.spacing, min_volume_mm3, ctx.connectivity) if min_volume_mm3 > 0 else mask


@register_step("shape_filter")
def shape_filter(mask: np.ndarray, ctx: StepContext, *, max_elongation: float) -> np.ndarray:
    """Drop components more elongated than ``max_elongation`` (vessel-like); 0 = off."""
    return remove_elongated_components(mask, ctx.spacing, max_elongation, ctx.connectivity)


@register_step("keep_largest")
def keep_largest(mask: np.ndarray, ctx: StepContext) -> np.ndarray:
    """Keep only the largest component."""
    return keep_largest_component(mask, ctx.connectivity)


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(valid) or 'none'}"


def enabled_steps(post: PostprocessConfig) -> list[tuple[StepSpec, dict[str, Any]]]:
    """The configured steps in order, each with its settings; ConfigError naming the first unknown step, unknown
    or missing setting, or value of the wrong type."""
    out = []
    for name, entry in post.steps.items():
        where = f"postprocess.steps.{name}"
        if name not in STEPS:
            raise ConfigError(f"unknown post-processing step {where}{_suggest(name, list(STEPS))}")
        spec, settings = STEPS[name], dict(entry)
        if not settings.pop(ENABLED, True):
            continue
        params = spec.keywords()
        for key in settings:
            if key not in params:
                raise ConfigError(f"unknown setting {where}.{key}{_suggest(key, [ENABLED, *params])}")
        for key, param in params.items():
            if key not in settings and param.default is inspect.Parameter.empty:
                raise ConfigError(f"{where} needs {key}")
            value = settings.get(key, param.default)
            if param.annotation in (bool, "bool"):
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{where}.{key} must be a number >= 0, got {value!r}")
        if spec.check is not None:
            spec.check(**settings)
        out.append((spec, settings))
    return out


def check_steps(post: PostprocessConfig) -> None:
    """Validate the ``postprocess`` section against the registered steps (before any work)."""
    enabled_steps(post)


def needs_hu(post: PostprocessConfig) -> list[str]:
    """The enabled steps that read the CT (the ``postprocess`` verb needs ``--image`` for them)."""
    return [spec.name for spec, _ in enabled_steps(post) if spec.needs_hu]


def apply_steps(mask: np.ndarray, ctx: StepContext, steps: list[tuple[StepSpec, dict[str, Any]]]) -> np.ndarray:
    """Run ``steps`` on a boolean mask crop, in order."""
    m = np.asarray(mask, dtype=bool)
    for spec, settings in steps:
        m = np.asarray(spec.fn(m, ctx, **settings), dtype=bool)
    return m


def _reach_voxels(steps: list[tuple[StepSpec, dict[str, Any]]], spacing) -> list[int]:
    reach = max([float(s[spec.reach]) for spec, s in steps if spec.reach], default=0.0)
    return [int(np.ceil(reach / sp)) + 2 for sp in spacing]


def postprocess_array(mask: np.ndarray, spacing, post: PostprocessConfig, hu: np.ndarray | None = None,
                      geometry: Geometry | None = None, body_threshold_hu: float = -500.0) -> np.ndarray:
    """The configured steps on a whole (x, y, z) mask; returns uint8 0/1 in ``mask``'s memory order.

    Everything runs inside the mask's bounding box widened by the steps' reach: the whole volume is touched only
    to find that box and to write the result."""
    steps = enabled_steps(post)
    if hu is None and any(spec.needs_hu for spec, _ in steps):
        raise ValueError(f"post-processing step(s) {', '.join(needs_hu(post))} need the CT (HU) of the mask")
    m = np.asarray(mask) > 0
    fortran = m.flags.f_contiguous and not m.flags.c_contiguous
    out = np.zeros(m.shape[::-1], np.uint8).T if fortran else np.zeros(m.shape, np.uint8)
    spacing = tuple(float(s) for s in spacing)
    box = bounding_box(m, _reach_voxels(steps, spacing))
    if box is None:
        return out
    ctx = StepContext(spacing, post.connectivity, box, geometry, hu, body_threshold_hu)
    out[box] = apply_steps(np.ascontiguousarray(m[box]), ctx, steps)
    return out


def postprocess_case(mask: np.ndarray, hu: np.ndarray | None, geometry: Geometry, cfg: PipelineConfig) -> np.ndarray:
    """The configured post-processing of one predicted mask on its input grid (x, y, z), the CT ``hu`` on the
    same grid. Used by ``infer``, the bundle, the Python API and ``postprocess`` alike."""
    return postprocess_array(mask, geometry.spacing, cfg.postprocess, hu, geometry,
                             cfg.preprocessing.body_threshold_hu)


def steps_from_mapping(steps: Mapping[str, Mapping[str, Any]], connectivity: int = 26) -> PostprocessConfig:
    """A ``postprocess`` section from a plain mapping of steps (for the transforms and scripts)."""
    return PostprocessConfig(connectivity=connectivity, steps={k: dict(v) for k, v in steps.items()})
