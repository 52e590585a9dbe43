"""The one typed configuration: frozen dataclasses whose values come only from ``configs/default.yaml``.

:func:`load_config` merges overlays (files or dicts) over ``default.yaml`` (dicts merge key by key, everything
else is replaced) and builds a :class:`PipelineConfig`. Every key must be known: a misspelt key is an error
that names it and suggests the closest valid one; every range is checked here, once, at load time. Library
code reads attributes (``cfg.inference.overlap``) and never carries a fallback of its own: the defaults live in
``default.yaml`` and nowhere else.

Model files store :meth:`PipelineConfig.to_dict` (plain data, loadable with ``torch.load(weights_only=True)``);
:func:`config_from_model_dict` rebuilds it, merged over the current defaults so that model files written
before a key was added still load.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from monai_pipeline.errors import ConfigError, InputError
from monai_pipeline.io.writer import atomic_write_text

NORMALIZATIONS = ("window", "nnunet")
CROPS = ("none", "body", "lungs")
CACHES = ("none", "memory", "disk")
OPTIMIZERS = ("adamw", "sgd")
#: what the network is trained to reproduce: the consensus mask, the fraction of readers marking each voxel,
#: or the union of the readers' masks (training.label_mode)
LABEL_MODES = ("consensus", "soft", "any-reader")
SCHEDULERS = ("cosine", "poly", "none")
#: which weights a run's model file holds (training.keep): those after the last epoch, or the validation's best
KEEPS = ("final", "best")
#: what a model file written before a key existed did, where today's default differs (config_from_model_dict)
FORMER_DEFAULTS = {"training": {"keep": "best"}}
NETWORKS = ("UNet", "SegResNet", "DynUNet", "BasicUNet")
SAMPLINGS = ("posneg", "lesion")
RESAMPLE_MODES = ("linear", "nearest")
SEG_SEGMENTS = ("single", "lesion")
LESION_SCORES = ("max", "mean")
BLEND_MODES = ("gaussian", "constant")
Triple = tuple[float, float, float]
IntTriple = tuple[int, int, int]

#: keys whose values are free-form mappings (merged whole, not key by key, and not checked key by key)
FREE_MAPPINGS = ("kwargs", "intensity_stats", "labels", "candidate_classifier")
#: ordered mappings: merged key by key, and an overlay naming every key of the base sets their order
ORDERED_MAPPINGS = ("steps",)
#: bundle layout: ``configs/pipeline.yaml`` overlays the defaults, a trained model brings ``models/pipeline.yaml``
BUNDLE_CONFIG, BUNDLE_MODEL_CONFIG = "configs/pipeline.yaml", "models/pipeline.yaml"


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _one_of(name: str, value: Any, options: tuple) -> None:
    _need(value in options, f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")


def _positive_triple(name: str, value: tuple) -> None:
    _need(all(v > 0 for v in value), f"{name} must be 3 positive numbers (x, y, z), got {list(value)}")


def _prob(name: str, value: float) -> None:
    _need(0.0 <= value <= 1.0, f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class PreprocessingConfig:
    """Geometry and intensity preprocessing; array axes (x, y, z) of the RAS-oriented image."""

    orientation: str
    target_spacing: Triple  # mm
    normalization: str  # window | nnunet
    hu_window: tuple[float, float]  # HU mapped to 0..1 (window normalisation)
    intensity_stats: dict | None  # nnunet: mean, std, p00_5, p99_5 of foreground HU (train computes it)
    crop: str  # none | body | lungs
    body_threshold_hu: float
    crop_margin_mm: float

    def __post_init__(self) -> None:
        _need(len(self.orientation) == 3,
              f"preprocessing.orientation must be 3 axis codes (e.g. RAS), got {self.orientation!r}")
        _positive_triple("preprocessing.target_spacing", self.target_spacing)
        _one_of("preprocessing.normalization", self.normalization, NORMALIZATIONS)
        _need(self.hu_window[0] < self.hu_window[1],
              f"preprocessing.hu_window must be [low, high] HU with low < high, got {list(self.hu_window)}")
        _one_of("preprocessing.crop", self.crop, CROPS)
        _need(self.crop_margin_mm >= 0, f"preprocessing.crop_margin_mm must be >= 0, got {self.crop_margin_mm}")
        if self.intensity_stats is not None:
            missing = {"mean", "std", "p00_5", "p99_5"} - set(self.intensity_stats)
            _need(not missing,
                  f"preprocessing.intensity_stats must have mean, std, p00_5 and p99_5; missing {sorted(missing)}")


@dataclass(frozen=True)
class PatchConfig:
    """Training patches (voxels at the target spacing) and how their centres are drawn."""

    size: IntTriple
    num_samples: int
    sampling: str  # posneg | lesion
    pos: float
    neg: float
    neg_dark: float
    hard_negative_hu: float

    def __post_init__(self) -> None:
        _positive_triple("patch.size", self.size)
        _need(self.num_samples >= 1, f"patch.num_samples must be >= 1, got {self.num_samples}")
        _one_of("patch.sampling", self.sampling, SAMPLINGS)
        for name in ("pos", "neg", "neg_dark"):
            _need(getattr(self, name) >= 0, f"patch.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class AugmentationConfig:
    """Random augmentation of training patches (probabilities in [0, 1], angles in degrees)."""

    flip_prob: float
    rotate90_prob: float
    affine_prob: float
    rotate_range_deg: float
    scale_range: float
    intensity_scale: float
    intensity_shift: float
    noise_std: float
    noise_prob: float

    def __post_init__(self) -> None:
        for name in ("flip_prob", "rotate90_prob", "affine_prob", "noise_prob"):
            _prob(f"augmentation.{name}", getattr(self, name))
        for name in ("rotate_range_deg", "scale_range", "intensity_scale", "intensity_shift", "noise_std"):
            _need(getattr(self, name) >= 0, f"augmentation.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class NetworkConfig:
    """A MONAI network by class name and its constructor arguments."""

    name: str
    kwargs: dict

    def __post_init__(self) -> None:
        _one_of("network.name", self.name, NETWORKS)

    @property
    def out_channels(self) -> int:
        return int(self.kwargs.get("out_channels", 2))

    @property
    def deep_supervision(self) -> bool:
        """True for DynUNet with ``deep_supervision``: in training mode its output stacks the main head and
        ``deep_supr_num`` coarser heads (upsampled to the patch) on axis 1; in evaluation mode only the main head."""
        return self.name == "DynUNet" and bool(self.kwargs.get("deep_supervision", False))


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    scheduler: str
    val_interval: int  # epochs
    early_stopping_patience: int  # validations without improvement; 0 = off
    keep: str  # final | best: the weights model.pt holds (see KEEPS)
    amp: bool  # CUDA AMP
    bf16: bool | str  # CPU bf16 autocast: true, false or "auto"
    seed: int
    cache: str
    num_workers: int
    label_mode: str  # consensus | soft | any-reader (LIDC reader agreement; docs/lidc.md)
    operating_fp_per_scan: float  # false positives per scan at which the lesion-score threshold is chosen; 0 = off
    fp_reduction: bool  # fit the second-stage candidate classifier on the validation candidates before that choice

    def __post_init__(self) -> None:
        _one_of("training.label_mode", self.label_mode, LABEL_MODES)
        _need(self.operating_fp_per_scan >= 0,
              f"training.operating_fp_per_scan must be >= 0, got {self.operating_fp_per_scan}")
        _need(self.epochs >= 1, f"training.epochs must be >= 1, got {self.epochs}")
        _need(self.batch_size >= 1, f"training.batch_size must be >= 1, got {self.batch_size}")
        _one_of("training.optimizer", self.optimizer, OPTIMIZERS)
        _need(self.lr > 0, f"training.lr must be > 0, got {self.lr}")
        _need(self.weight_decay >= 0, f"training.weight_decay must be >= 0, got {self.weight_decay}")
        _one_of("training.scheduler", self.scheduler, SCHEDULERS)
        _need(self.val_interval >= 1, f"training.val_interval must be >= 1, got {self.val_interval}")
        _need(self.early_stopping_patience >= 0,
              f"training.early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        _one_of("training.keep", self.keep, KEEPS)
        _one_of("training.bf16", self.bf16, (True, False, "auto"))
        _one_of("training.cache", self.cache, CACHES)
        _need(self.num_workers >= 0, f"training.num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class InferenceConfig:
    roi_size: IntTriple  # voxels (x, y, z) at the target spacing
    overlap: float
    sw_batch_size: int
    mode: str  # gaussian | constant blending
    sigma_scale: float
    tta: bool
    tta_axes: tuple[int, ...]  # network-grid axes (0 = x, 1 = y, 2 = z) mirrored by TTA: 2^len passes
    tta_scope: str  # candidates: mirrored passes only around the plain pass's candidates | volume: everywhere
    bf16: bool | str
    amp: bool  # fp16 autocast on CUDA
    resample: str  # linear: foreground probability resampled (around candidates), then decided | nearest: label
    channels_last: bool  # run the network in channels-last 3D memory format
    subpixel_upsampling: bool | str  # few-output-channel transposed convolutions as convolution + shuffle (auto: CPU)
    foreground_threshold: float  # a voxel is foreground where p(foreground) > this (0.5: the argmax)
    min_lesion_score: float  # lesions scoring below this are dropped (0: keep all); train sets it on validation
    lesion_score: str  # a lesion's score: max | mean foreground probability over its network-grid voxels
    seg_segments: str  # DICOM SEG output: single (one segment for all lesions) | lesion (segment k = lesion k)
    candidate_classifier: dict | None  # second-stage lesion scorer, set by calibration; checked where it is used
    #                                    (postprocess.candidates.check_classifier: the predictor, before any work)

    def __post_init__(self) -> None:
        _positive_triple("inference.roi_size", self.roi_size)
        _need(0 < self.foreground_threshold < 1,
              f"inference.foreground_threshold must be > 0 and < 1, got {self.foreground_threshold}")
        _need(0 <= self.min_lesion_score <= 1,
              f"inference.min_lesion_score must be in [0, 1], got {self.min_lesion_score}")
        _one_of("inference.resample", self.resample, RESAMPLE_MODES)
        _one_of("inference.seg_segments", self.seg_segments, SEG_SEGMENTS)
        _one_of("inference.lesion_score", self.lesion_score, LESION_SCORES)
        _one_of("inference.tta_scope", self.tta_scope, ("candidates", "volume"))
        _need(len(self.tta_axes) > 0 and len(set(self.tta_axes)) == len(self.tta_axes)
              and all(a in (0, 1, 2) for a in self.tta_axes),
              f"inference.tta_axes must be distinct axes out of 0, 1, 2, got {list(self.tta_axes)}")
        _need(0 <= self.overlap < 1, f"inference.overlap must be >= 0 and < 1, got {self.overlap}")
        _need(self.sw_batch_size >= 1, f"inference.sw_batch_size must be >= 1, got {self.sw_batch_size}")
        _one_of("inference.mode", self.mode, BLEND_MODES)
        _need(self.sigma_scale > 0, f"inference.sigma_scale must be > 0, got {self.sigma_scale}")
        _one_of("inference.bf16", self.bf16, (True, False, "auto"))
        _one_of("inference.subpixel_upsampling", self.subpixel_upsampling, (True, False, "auto"))


@dataclass(frozen=True)
class PostprocessConfig:
    """Clean-up of predicted masks on the input grid: ``steps`` maps each step's name (a function of
    :mod:`monai_pipeline.postprocess.steps`) to its settings, run in this order; ``enabled: false`` skips one.
    Step names and settings are checked against the steps' keyword arguments by
    :func:`monai_pipeline.postprocess.check_steps` (this module sits below the registry)."""

    connectivity: int
    steps: dict

    def __post_init__(self) -> None:
        _one_of("postprocess.connectivity", self.connectivity, (6, 18, 26))
        for name, settings in self.steps.items():
            _need(isinstance(settings, dict), f"postprocess.steps.{name} must be a mapping of settings, got "
                  f"{settings!r}")
            _need(isinstance(settings.get("enabled", True), bool),
                  f"postprocess.steps.{name}.enabled must be true or false, got {settings.get('enabled')!r}")

    def step_enabled(self, name: str) -> bool:
        """Whether step ``name`` is configured and not switched off."""
        return name in self.steps and bool(self.steps[name].get("enabled", True))


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that defines a model and how it is applied; stored in every model file."""

    labels: dict
    preprocessing: PreprocessingConfig
    patch: PatchConfig
    augmentation: AugmentationConfig
    network: NetworkConfig
    training: TrainingConfig
    inference: InferenceConfig
    postprocess: PostprocessConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples): what model files and ``config.yaml`` store."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def merged(self, *overlays: dict | None) -> PipelineConfig:
        """A new configuration with ``overlays`` (nested dicts) merged over this one, validated."""
        data = self.to_dict()
        for overlay in overlays:
            data = deep_merge(data, upgrade(overlay or {}))
        return from_dict(data)


# -- building -----------------------------------------------------------------------------------------------
def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def _check_keys(where: str, data: dict, valid: list[str]) -> None:
    for key in data:
        if key not in valid:
            raise ConfigError(f"unknown configuration key {where}{key!r}{_suggest(str(key), valid)}")
    missing = [k for k in valid if k not in data]
    if missing:
        raise ConfigError(f"configuration {where.rstrip('.') or 'top level'} is missing {', '.join(missing)}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the field type ``hint`` (lists to tuples, ints to floats) or a ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(name, value, opt)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is tuple and len(typing.get_args(hint)) == 2 and typing.get_args(hint)[1] is Ellipsis:
        item = typing.get_args(hint)[0]
        _need(isinstance(value, list | tuple), f"{name} must be a list, got {value!r}")
        return tuple(_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(hint)
        _need(isinstance(value, list | tuple) and len(value) == len(args),
              f"{name} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if hint is dict:
        _need(isinstance(value, dict), f"{name} must be a mapping, got {value!r}")
        return copy.deepcopy(value)
    if hint is bool:
        _need(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        _need(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        _need(isinstance(value, int | float) and not isinstance(value, bool), f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        _need(isinstance(value, str), f"{name} must be a string, got {value!r}")
        return value
    if isinstance(hint, type) and issubclass(hint, str):
        return value
    raise ConfigError(f"{name}: unsupported field type {hint}")  # pragma: no cover - programming error


def _build_section(cls: type, data: Any, where: str) -> Any:
    _need(isinstance(data, dict), f"configuration section {where.rstrip('.')} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    _check_keys(where, data, names)
    return cls(**{n: _coerce(f"{where}{n}", data[n], hints[n]) for n in names})


def from_dict(data: dict) -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig` from a complete nested dict (every key present)."""
    _need(isinstance(data, dict), f"configuration must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(PipelineConfig)
    names = [f.name for f in fields(PipelineConfig)]
    _check_keys("", data, names)
    labels = data["labels"]
    _need(isinstance(labels, dict), f"labels must be a mapping of label value to name, got {labels!r}")
    sections = {n: _build_section(hints[n], data[n], f"{n}.") for n in names if n != "labels"}
    cfg = PipelineConfig(labels={str(k): str(v) for k, v in labels.items()}, **sections)
    _need(cfg.preprocessing.normalization != "nnunet" or cfg.preprocessing.intensity_stats is None
          or cfg.preprocessing.intensity_stats["std"] > 0, "preprocessing.intensity_stats.std must be > 0")
    return cfg


def default_dict() -> dict[str, Any]:
    """``configs/default.yaml`` as a plain nested dict: the only place a default value lives."""
    text = resources.files("monai_pipeline").joinpath("configs/default.yaml").read_text()
    return yaml.safe_load(text)


#: ``postprocess`` keys of configurations written before the steps list (0.1.x), and where each now lives:
#: (step, setting); ``enabled`` is the step's switch
FLAT_POSTPROCESS_KEYS = {
    "lung_filter": ("lung_filter", "enabled"), "lung_closing_mm": ("lung_filter", "lung_closing_mm"),
    "lung_min_fraction": ("lung_filter", "lung_min_fraction"), "closing_mm": ("closing", "closing_mm"),
    "opening_mm": ("opening", "opening_mm"), "fill_holes": ("fill_holes", "enabled"),
    "min_volume_mm3": ("remove_small", "min_volume_mm3"), "keep_largest": ("keep_largest", "enabled"),
}


#: keys of 0.1.x that nothing read (dropped when older model files and overlays load)
RETIRED_KEYS = {"inference": ("sw_device",)}


def upgrade(data: dict) -> dict:
    """A configuration (or overlay) of 0.1.x in today's shape, so that older model files and overlays keep
    loading and mean what they meant: the flat ``postprocess`` keys moved into ``postprocess.steps``, keys that
    nothing read dropped."""
    if not isinstance(data, dict):
        return data
    for section, keys in RETIRED_KEYS.items():
        if isinstance(data.get(section), dict) and any(k in data[section] for k in keys):
            data = {**data, section: {k: v for k, v in data[section].items() if k not in keys}}
    if not isinstance(data.get("postprocess"), dict):
        return data
    section = dict(data["postprocess"])
    if not any(k in section for k in FLAT_POSTPROCESS_KEYS):
        return data
    steps = copy.deepcopy(section.pop("steps", None) or {})
    for key, (step, setting) in FLAT_POSTPROCESS_KEYS.items():
        if key in section:
            steps.setdefault(step, {})[setting] = section.pop(key)
    return {**data, "postprocess": {**section, "steps": steps}}


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; values of ``override`` win, nested dicts merge (free mappings are replaced)."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in FREE_MAPPINGS:
            merged = deep_merge(out[k], v)
            if k in ORDERED_MAPPINGS and set(v) >= set(out[k]):
                merged = {name: merged[name] for name in v}
            out[k] = merged
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_config_file(path: str | Path) -> dict:
    """A YAML or JSON overlay file as a dict (empty file: no overrides)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file does not exist")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise InputError(path, f"not valid YAML/JSON ({str(err).splitlines()[0]})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, "config must be a mapping at the top level")
    return data


def load_config(*sources: str | Path | dict | None) -> PipelineConfig:
    """``default.yaml``, then each source (file path or dict) merged over it in order; typed and validated.

    An error in a file's overlay names the file."""
    data = default_dict()
    for src in sources:
        if src is None:
            continue
        if isinstance(src, dict):
            data = deep_merge(data, upgrade(src))
            continue
        data = deep_merge(data, upgrade(read_config_file(src)))
        try:
            from_dict(data)
        except ConfigError as err:
            raise InputError(src, str(err)) from err
    return from_dict(data)


def config_from_model_dict(stored: dict) -> PipelineConfig:
    """The configuration stored in a model file, merged over today's defaults (keys added since fill in, with
    what the file's version did where today's default differs: :data:`FORMER_DEFAULTS`)."""
    return from_dict(deep_merge(deep_merge(default_dict(), FORMER_DEFAULTS), upgrade(stored)))


def bundle_config(bundle_root: str | Path) -> PipelineConfig:
    """A bundle's configuration: defaults <- ``configs/pipeline.yaml`` <- ``models/pipeline.yaml`` (if any)."""
    root = Path(bundle_root)
    extra = root / BUNDLE_MODEL_CONFIG
    return load_config(root / BUNDLE_CONFIG, extra if extra.is_file() else None)


def is_bundle_checkpoint(path: str | Path) -> bool:
    """True for ``<bundle>/models/<file>`` beside ``<bundle>/configs/pipeline.yaml``."""
    p = Path(path)
    return p.parent.name == "models" and (p.parent.parent / BUNDLE_CONFIG).is_file()


def dump_config(cfg: PipelineConfig, path: str | Path) -> Path:
    """Write ``cfg`` as YAML atomically."""

    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
