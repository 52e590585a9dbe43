"""Transform chains built from the configuration (the single definition of preprocessing).

``load`` -> ``preprocess`` (channel first, RAS, crop to the lungs or body, spacing, HU normalisation) -> for
training the sampling indices (cached) then random patches and augmentation. The same functions serve the CLI,
the bundle (``$monai_pipeline.transforms.pipeline.train_transforms(@pipeline_config)``) and prediction
(:func:`prediction_transforms`, used by ``infer``, the Python API and the bundle's inference alike).
"""

from __future__ import annotations

import math

import numpy as np
from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    LoadImaged,
    Orientationd,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    SpatialPadd,
)

from monai_pipeline.config import PipelineConfig
from monai_pipeline.io.reader import ReadOptions, SimpleITKReader
from monai_pipeline.transforms.array import HUThreshold, LungSelect
from monai_pipeline.transforms.dictionary import (
    CheckGeometryd,
    CropForegroundMMd,
    CTNormalized,
    LesionComponentsd,
    LoadCTd,
    ResampleToSpacingd,
)


def load_transforms(keys: tuple[str, ...] = ("image", "label"), reader_options: dict | None = None) -> list:
    """``LoadImaged`` with the project's SimpleITK reader (the image checked as CT in HU, the label as a label
    map), channel first, and the image/label geometry check."""
    out = [LoadImaged(keys="image", reader=SimpleITKReader(**(reader_options or {})), image_only=True)]
    labels = [k for k in keys if k != "image"]
    if labels:
        out.append(LoadImaged(keys=labels, reader=SimpleITKReader(content="label", allow_non_ct=True), image_only=True))
    return [*out, EnsureChannelFirstd(keys=list(keys), channel_dim="no_channel"), CheckGeometryd(keys=list(keys))]


def preprocess_transforms(cfg: PipelineConfig, keys: tuple[str, ...] = ("image", "label")) -> list:
    """Preprocessing after loading: RAS, target spacing (mm), crop (lungs/body), then HU normalisation."""
    return [*spatial_transforms(cfg, keys), *intensity_transforms(cfg, keys)]


def spatial_transforms(cfg: PipelineConfig, keys: tuple[str, ...] = ("image", "label")) -> list:
    """RAS orientation, the crop (lungs/body, margin in mm) on the original grid, then resampling to the target
    spacing (mm) of only what is kept (:class:`ResampleToSpacingd`: MONAI's ``Spacing`` grid, separable linear
    interpolation); values stay in HU. Cropping first halves the resampling work."""
    pre = cfg.preprocessing
    has_label = "label" in keys
    modes = ["bilinear"] + (["nearest"] if has_label else [])
    out: list = [Orientationd(keys=list(keys), axcodes=pre.orientation, labels=None)]
    if pre.crop in ("body", "lungs"):
        select = (HUThreshold(pre.body_threshold_hu) if pre.crop == "body" else LungSelect(pre.body_threshold_hu))
        out.append(CropForegroundMMd(keys=list(keys), source_key="image", select_fn=select,
                                     margin_mm=pre.crop_margin_mm))
    out.append(ResampleToSpacingd(keys=list(keys), pixdim=pre.target_spacing, mode=modes))
    return out


def intensity_transforms(cfg: PipelineConfig, keys: tuple[str, ...] = ("image", "label")) -> list:
    """HU normalisation of the image and the output types (float32 image, uint8 label)."""
    has_label = "label" in keys
    return [normalization_transform(cfg, "image"),
            EnsureTyped(keys=list(keys), dtype=[np.float32] + ([np.uint8] if has_label else []), track_meta=True)]


def normalization_transform(cfg: PipelineConfig, key: str = "image"):
    """HU window to 0..1 (clipped), or nnU-Net's CT normalisation with the training set's statistics."""
    pre = cfg.preprocessing
    if pre.normalization == "window":
        lo, hi = pre.hu_window
        return ScaleIntensityRanged(keys=key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    stats = pre.intensity_stats
    if not stats:
        raise ValueError("preprocessing.intensity_stats must be set for nnunet normalisation (train computes it)")
    return CTNormalized(keys=key, mean=stats["mean"], std=stats["std"], lower=stats["p00_5"], upper=stats["p99_5"])


MAX_LESION_CLASSES = 8
#: how a patch of a volume smaller than ``patch.size`` is padded up to it: its edge voxels repeated (a thin
#: scan's end slices continued). The sliding window pads a volume smaller than its window the same way
#: (``monai_pipeline.inferers.WINDOW_PADDING``), so the network meets at inference only what it was trained on.
PATCH_PADDING = "replicate"


def sampling_index_transforms(cfg: PipelineConfig) -> list:
    """Deterministic (cacheable) index precomputation for the configured patch sampling."""
    p = cfg.patch
    if p.sampling == "lesion":
        return [LesionComponentsd(keys="label", output_key="label_cc", max_components=MAX_LESION_CLASSES,
                                  hard_negative_hu=p.hard_negative_hu),
                ClassesToIndicesd(keys="label_cc", num_classes=MAX_LESION_CLASSES + 2, indices_postfix="_idx"),
                DeleteItemsd(keys="label_cc")]
    return [FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg")]


def patch_sampler(cfg: PipelineConfig, keys: list[str]):
    """``RandCropByPosNegLabeld`` (foreground:background voxels ``pos``:``neg``) or, with
    ``patch.sampling: lesion``, ``RandCropByLabelClassesd`` over the classes of :class:`LesionComponentsd`:
    each lesion weighted ``pos``, hard (bright) background ``neg``, dark background ``neg_dark``; small nodules
    are then sampled as often as large ones and negatives mostly show what looks like a nodule but is not."""
    p = cfg.patch
    if p.sampling == "lesion":
        return RandCropByLabelClassesd(keys=keys, label_key="label", spatial_size=p.size,
                                       ratios=[p.neg] + [p.pos] * MAX_LESION_CLASSES + [p.neg_dark],
                                       num_classes=MAX_LESION_CLASSES + 2, num_samples=p.num_samples,
                                       indices_key="label_cc_idx", allow_smaller=True, warn=False)
    return RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=p.size, pos=p.pos,
                                  neg=p.neg, num_samples=p.num_samples, fg_indices_key="label_fg",
                                  bg_indices_key="label_bg", allow_smaller=True)


def augmentation_transforms(cfg: PipelineConfig, keys: tuple[str, ...] = ("image", "label")) -> list:
    """Random patch sampling (indices precomputed; a patch of a volume smaller than ``patch.size`` padded up to
    it by :data:`PATCH_PADDING`) and augmentation, all on the patch."""
    a = cfg.augmentation
    k = list(keys)
    out: list = [patch_sampler(cfg, k), SpatialPadd(keys=k, spatial_size=cfg.patch.size, mode=PATCH_PADDING)]
    if a.affine_prob > 0:
        rr = math.radians(a.rotate_range_deg)
        out.append(RandAffined(keys=k, prob=a.affine_prob, rotate_range=(rr, rr, rr),
                               scale_range=(a.scale_range,) * 3, mode=("bilinear", "nearest"),
                               padding_mode="border", spatial_size=cfg.patch.size))
    if a.flip_prob > 0:
        out += [RandFlipd(keys=k, prob=a.flip_prob, spatial_axis=i) for i in range(3)]
    if a.rotate90_prob > 0:
        out.append(RandRotate90d(keys=k, prob=a.rotate90_prob, max_k=3, spatial_axes=(0, 1)))
    if a.intensity_scale > 0:
        out.append(RandScaleIntensityd(keys="image", factors=a.intensity_scale, prob=0.5))
    if a.intensity_shift > 0:
        out.append(RandShiftIntensityd(keys="image", offsets=a.intensity_shift, prob=0.5))
    if a.noise_prob > 0:
        out.append(RandGaussianNoised(keys="image", prob=a.noise_prob, std=a.noise_std))
    out.append(EnsureTyped(keys=k, track_meta=False))
    return out


def train_transforms(cfg: PipelineConfig, reader_options: dict | None = None) -> Compose:
    """Full training chain; everything up to the index precomputation is deterministic (cacheable)."""
    keys = ("image", "label")
    return Compose([*load_transforms(keys, reader_options), *spatial_transforms(cfg, keys),
                    *sampling_index_transforms(cfg), *intensity_transforms(cfg, keys),
                    *augmentation_transforms(cfg, keys)])


def val_transforms(cfg: PipelineConfig, reader_options: dict | None = None) -> Compose:
    keys = ("image", "label")
    return Compose([*load_transforms(keys, reader_options), *preprocess_transforms(cfg, keys)])


def prediction_transforms(cfg: PipelineConfig, read_options: ReadOptions | None = None) -> Compose:
    """Prediction's chain: ``{"image": path}`` -> :class:`LoadCTd` (one read; the untouched input grid kept as
    ``"original"``) -> channel-first network input on the preprocessed grid. ``infer``, the Python API and
    the bundle's inference all run exactly this."""
    return Compose([LoadCTd(keys="image", original_key="original", read_options=read_options),
                    *preprocess_transforms(cfg, ("image",))])
