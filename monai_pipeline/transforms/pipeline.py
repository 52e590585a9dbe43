"""Transform chains built from the configuration (the single definition of preprocessing).

``load`` -> ``preprocess`` (channel first, RAS, spacing, HU normalisation, crop to the body) -> for training
``FgBgToIndicesd`` (cached) then random patches and augmentation. The same functions serve the CLI, the bundle
(via ``$monai_pipeline.transforms.pipeline.train_transforms(@pipeline_config)``) and inference.
"""

from __future__ import annotations

import math

import numpy as np
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    LoadImaged,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)

from monai_pipeline.io.reader import SimpleITKReader
from monai_pipeline.transforms.array import HUThreshold
from monai_pipeline.transforms.dictionary import CheckGeometryd, CTNormalized


def load_transforms(keys: tuple[str, ...] = ("image", "label"), reader_options: dict | None = None) -> list:
    """``LoadImaged`` with the project's SimpleITK reader, channel first, and the image/label geometry check."""
    return [
        LoadImaged(keys=list(keys), reader=SimpleITKReader(**(reader_options or {})), image_only=True),
        EnsureChannelFirstd(keys=list(keys), channel_dim="no_channel"),
        CheckGeometryd(keys=list(keys)),
    ]


def preprocess_transforms(cfg: dict, keys: tuple[str, ...] = ("image", "label")) -> list:
    """Spatial and intensity preprocessing after loading: RAS, target spacing (mm), HU normalisation, body crop."""
    pre = cfg["preprocessing"]
    has_label = "label" in keys
    modes = ["bilinear"] + (["nearest"] if has_label else [])
    out: list = [
        Orientationd(keys=list(keys), axcodes=pre["orientation"], labels=None),
        Spacingd(keys=list(keys), pixdim=tuple(pre["target_spacing"]), mode=modes),
    ]
    if pre.get("crop", "none") == "body":
        margin = [int(math.ceil(pre["crop_margin_mm"] / s)) for s in pre["target_spacing"]]
        out.append(CropForegroundd(keys=list(keys), source_key="image", select_fn=HUThreshold(pre["body_threshold_hu"]),
                                   margin=margin, allow_smaller=True))
    out.append(normalization_transform(cfg, "image"))
    out.append(EnsureTyped(keys=list(keys), dtype=[np.float32] + ([np.uint8] if has_label else []), track_meta=True))
    return out


def normalization_transform(cfg: dict, key: str = "image"):
    pre = cfg["preprocessing"]
    if pre["normalization"] == "window":
        lo, hi = pre["hu_window"]
        return ScaleIntensityRanged(keys=key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    stats = pre.get("intensity_stats")
    if not stats:
        raise ValueError("preprocessing.intensity_stats must be set for nnunet normalisation (train computes it)")
    return CTNormalized(keys=key, mean=stats["mean"], std=stats["std"], lower=stats["p00_5"], upper=stats["p99_5"])


def augmentation_transforms(cfg: dict, keys: tuple[str, ...] = ("image", "label")) -> list:
    """Random patch sampling (fg/bg indices precomputed) and augmentation, all on the patch."""
    p, a = cfg["patch"], cfg["augmentation"]
    k = list(keys)
    out: list = [
        RandCropByPosNegLabeld(keys=k, label_key="label", spatial_size=tuple(p["size"]), pos=p["pos"], neg=p["neg"],
                               num_samples=int(p["num_samples"]), fg_indices_key="label_fg", bg_indices_key="label_bg",
                               allow_smaller=True),
    ]
    if a.get("affine_prob", 0) > 0:
        rr = math.radians(a["rotate_range_deg"])
        out.append(RandAffined(keys=k, prob=a["affine_prob"], rotate_range=(rr, rr, rr),
                               scale_range=(a["scale_range"],) * 3, mode=("bilinear", "nearest"),
                               padding_mode="border", spatial_size=tuple(p["size"])))
    if a.get("flip_prob", 0) > 0:
        out += [RandFlipd(keys=k, prob=a["flip_prob"], spatial_axis=i) for i in range(3)]
    if a.get("rotate90_prob", 0) > 0:
        out.append(RandRotate90d(keys=k, prob=a["rotate90_prob"], max_k=3, spatial_axes=(0, 1)))
    if a.get("intensity_scale", 0) > 0:
        out.append(RandScaleIntensityd(keys="image", factors=a["intensity_scale"], prob=0.5))
    if a.get("intensity_shift", 0) > 0:
        out.append(RandShiftIntensityd(keys="image", offsets=a["intensity_shift"], prob=0.5))
    if a.get("noise_prob", 0) > 0:
        out.append(RandGaussianNoised(keys="image", prob=a["noise_prob"], std=a["noise_std"]))
    out.append(EnsureTyped(keys=k, track_meta=False))
    return out


def train_transforms(cfg: dict, reader_options: dict | None = None) -> Compose:
    """Full training chain; everything up to ``FgBgToIndicesd`` is deterministic (cacheable)."""
    keys = ("image", "label")
    return Compose([*load_transforms(keys, reader_options), *preprocess_transforms(cfg, keys),
                    FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg"),
                    *augmentation_transforms(cfg, keys)])


def val_transforms(cfg: dict, reader_options: dict | None = None) -> Compose:
    keys = ("image", "label")
    return Compose([*load_transforms(keys, reader_options), *preprocess_transforms(cfg, keys)])


def inference_transforms(cfg: dict, reader_options: dict | None = None) -> Compose:
    """Image-only chain used by inference (after loading); see :mod:`monai_pipeline.inference`."""
    return Compose([*load_transforms(("image",), reader_options), *preprocess_transforms(cfg, ("image",))])
