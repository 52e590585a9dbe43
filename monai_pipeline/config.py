"""Configuration as plain data: one YAML/JSON document read by the CLI, the bundle and inference.

:func:`load_config` merges a user file over ``configs/default.yaml`` (dicts merge key by key, everything else
is replaced) and validates the result. The merged dict is stored in every model file.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from monai_pipeline.errors import ConfigError, InputError

NORMALIZATIONS = ("window", "nnunet")
CROPS = ("none", "body", "lungs")
CACHES = ("none", "memory", "disk")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "poly", "none")
NETWORKS = ("UNet", "SegResNet", "DynUNet", "BasicUNet")


def default_config() -> dict[str, Any]:
    text = resources.files("monai_pipeline").joinpath("configs/default.yaml").read_text()
    return yaml.safe_load(text)


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; values of ``override`` win, nested dicts merge."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("kwargs", "intensity_stats"):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_config_file(path: str | Path) -> dict:
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


def load_config(*sources: str | Path | dict | None) -> dict[str, Any]:
    """Default config, then each source (file path or dict) merged over it in order; validated."""
    cfg = default_config()
    for src in sources:
        if src is None:
            continue
        cfg = deep_merge(cfg, src if isinstance(src, dict) else read_config_file(src))
    validate_config(cfg)
    return cfg


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _triple(name: str, v: Any, positive: bool = True) -> None:
    _need(isinstance(v, list | tuple) and len(v) == 3 and all(isinstance(x, int | float) for x in v)
          and (not positive or all(x > 0 for x in v)), f"{name} must be 3 positive numbers (x, y, z), got {v!r}")


def validate_config(cfg: dict) -> None:
    """Raise :class:`ConfigError` ("<param> must be <rule>, got <value>") on the first invalid value."""
    pre, patch, net, tr, inf, post = (cfg.get(k, {}) for k in
                                      ("preprocessing", "patch", "network", "training", "inference", "postprocess"))
    _triple("preprocessing.target_spacing", pre.get("target_spacing"))
    _need(pre.get("normalization") in NORMALIZATIONS,
          f"preprocessing.normalization must be one of {NORMALIZATIONS}, got {pre.get('normalization')!r}")
    w = pre.get("hu_window")
    _need(isinstance(w, list | tuple) and len(w) == 2 and w[0] < w[1],
          f"preprocessing.hu_window must be [low, high] HU with low < high, got {w!r}")
    _need(pre.get("crop") in CROPS, f"preprocessing.crop must be one of {CROPS}, got {pre.get('crop')!r}")
    _triple("patch.size", patch.get("size"))
    _need(patch.get("sampling", "posneg") in ("posneg", "lesion"),
          f"patch.sampling must be 'posneg' or 'lesion', got {patch.get('sampling')!r}")
    _need(int(patch.get("num_samples", 0)) >= 1, f"patch.num_samples must be >= 1, got {patch.get('num_samples')}")
    _need(net.get("name") in NETWORKS, f"network.name must be one of {NETWORKS}, got {net.get('name')!r}")
    _need(int(tr.get("epochs", 0)) >= 1, f"training.epochs must be >= 1, got {tr.get('epochs')}")
    _need(tr.get("optimizer") in OPTIMIZERS, f"training.optimizer must be one of {OPTIMIZERS}, got {tr.get('optimizer')!r}")
    _need(tr.get("scheduler") in SCHEDULERS, f"training.scheduler must be one of {SCHEDULERS}, got {tr.get('scheduler')!r}")
    _need(tr.get("cache") in CACHES, f"training.cache must be one of {CACHES}, got {tr.get('cache')!r}")
    _need(float(tr.get("lr", 0)) > 0, f"training.lr must be > 0, got {tr.get('lr')}")
    _triple("inference.roi_size", inf.get("roi_size"))
    ov = inf.get("overlap")
    _need(isinstance(ov, int | float) and 0 <= ov < 1, f"inference.overlap must be >= 0 and < 1, got {ov!r}")
    _need(int(inf.get("sw_batch_size", 0)) >= 1, f"inference.sw_batch_size must be >= 1, got {inf.get('sw_batch_size')}")
    _need(float(post.get("min_volume_mm3", -1)) >= 0,
          f"postprocess.min_volume_mm3 must be >= 0, got {post.get('min_volume_mm3')}")
    _need(post.get("connectivity") in (6, 18, 26), f"postprocess.connectivity must be 6, 18 or 26, got {post.get('connectivity')!r}")


def dump_config(cfg: dict, path: str | Path) -> Path:
    from monai_pipeline.io.writer import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
