"""Dictionary wrappers: thin ``keys``/``allow_missing_keys`` shells over :mod:`.array`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialCropd
from monai.utils import ensure_tuple_rep

from monai_pipeline.arrays import bounding_box, label_components
from monai_pipeline.errors import InputError
from monai_pipeline.io.geometry import sitk_to_xyz_array, spacing_from_affine
from monai_pipeline.io.reader import ReadOptions, read_ct, volume_meta
from monai_pipeline.lungs import lung_region
from monai_pipeline.transforms.array import CTNormalize, ResampleToSpacing, check_same_geometry

#: the optional item key naming the DICOM series to read (``LoadCTd``)
SERIES_KEY = "series_uid"


class CTNormalized(MapTransform):
    """Dictionary version of :class:`CTNormalize`."""

    backend = CTNormalize.backend

    def __init__(self, keys: KeysCollection, mean: float, std: float, lower: float, upper: float,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.normalizer = CTNormalize(mean, std, lower, upper)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


class ResampleToSpacingd(MapTransform):
    """Dictionary version of :class:`ResampleToSpacing`; ``mode`` one per key (``bilinear`` for images,
    ``nearest`` for labels) or one for all."""

    def __init__(self, keys: KeysCollection, pixdim, mode="bilinear", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        modes = ensure_tuple_rep(mode, len(self.keys))  # MONAI's per-key argument rule
        self.resamplers = {k: ResampleToSpacing(pixdim, m) for k, m in zip(self.keys, modes, strict=True)}

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resamplers[key](d[key])
        return d


class CheckGeometryd(MapTransform):
    """Fail at load time (not mid-training) when the grids of ``keys`` differ; the first key is the reference."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> Mapping[Hashable, object]:
        present = tuple(k for k in self.keys if k in data)
        if len(present) > 1:
            check_same_geometry(data, present)
        return data


class LesionComponentsd(MapTransform):
    """Sampling classes for patch centres, written to ``output_key`` (same grid as the label):

    * ``1..max_components``: the label's connected components (26-connected), one class per lesion (lesions
      beyond ``max_components`` share the last class), so every lesion is sampled equally often whatever its size;
    * ``0``: *hard* background, voxels brighter than ``hard_negative_hu`` in ``image_key`` (HU) inside the
      lungs (:func:`~monai_pipeline.lungs.lung_region`): vessels, the diaphragm domes, the pleura, the
      structures a nodule detector confuses with nodules (everywhere bright when no lungs are found);
    * ``max_components + 1``: the remaining background (aerated lung, soft tissue outside the lungs, air).

    Use with ``ClassesToIndicesd`` (cached) and ``RandCropByLabelClassesd``; the image must still be in HU.
    """

    def __init__(self, keys: KeysCollection, output_key: str = "label_cc", max_components: int = 8,
                 image_key: str = "image", hard_negative_hu: float = -300.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if max_components < 1:
            raise ValueError(f"max_components must be >= 1, got {max_components}")
        self.output_key, self.max_components = output_key, max_components
        self.image_key, self.hard_negative_hu = image_key, float(hard_negative_hu)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:

        def _np(x):
            return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)

        d = dict(data)
        img = d[self.image_key]
        image = _np(img)[0]
        spacing = spacing_from_affine(img.affine) if hasattr(img, "affine") else (1.0, 1.0, 1.0)
        lungs = lung_region(image, spacing)
        hard = image > self.hard_negative_hu
        if lungs.any():
            hard &= lungs
        for key in self.key_iterator(d):
            lab = _np(d[key])[0] > 0
            cc, _ = label_components(lab, 26)
            classes = np.minimum(cc, self.max_components).astype(np.uint8)
            classes[~lab & ~hard] = self.max_components + 1
            d[self.output_key] = classes[None]
        return d


class CropForegroundMMd(MapTransform):
    """``CropForegroundd`` with the margin in mm, converted per axis from the source image's own affine at call
    time (so it can run on the original grid, before resampling). ``select_fn`` is called on the source image;
    one with a ``bounding_box(img)`` method (:class:`~monai_pipeline.transforms.array.LungSelect`,
    :class:`~monai_pipeline.transforms.array.HUThreshold`) gives the box directly, and the crop is MONAI's
    ``SpatialCropd`` of that box plus the margin (clipped to the image), which updates the affine."""

    def __init__(self, keys: KeysCollection, source_key: str, select_fn, margin_mm: float,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.source_key, self.select_fn, self.margin_mm = source_key, select_fn, float(margin_mm)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:

        source = data[self.source_key]
        spacing = spacing_from_affine(source.affine)
        margin = [int(math.ceil(self.margin_mm / s)) for s in spacing]
        if hasattr(self.select_fn, "bounding_box"):
            box = self.select_fn.bounding_box(source)
        else:
            sel = self.select_fn(source)
            sel = sel.detach().cpu().numpy() if isinstance(sel, torch.Tensor) else np.asarray(sel)
            box = bounding_box(sel.reshape(-1, *sel.shape[-3:]).any(axis=0))
        if box is None:
            raise InputError(source.meta.get("filename_or_obj"), f"nothing to crop to: {self.select_fn!r} selects no "
                             "voxel (an all-air volume? is this a CT in Hounsfield units?)")
        shape = source.shape[1:]
        start = [max(0, b.start - m) for b, m in zip(box, margin, strict=True)]
        end = [min(int(n), b.stop + m) for b, m, n in zip(box, margin, shape, strict=True)]
        return SpatialCropd(keys=self.keys, roi_start=start, roi_end=end,
                            allow_missing_keys=self.allow_missing_keys)(data)


class LoadCTd(MapTransform):
    """Read a CT once with :func:`~monai_pipeline.io.reader.read_ct` (any supported file or DICOM folder, with
    ``read_options``): ``d[key]`` becomes the HU array ``(1, X, Y, Z)`` as a MetaTensor with RAS affines, and
    ``d[original_key]`` the same voxels on the untouched input grid, kept for the export step (lung filter,
    lesion HU, writing in the input's geometry). Its metadata carry ``source_geometry`` (the exact LPS grid)
    and ``filename_or_obj``; both survive MONAI's collate/decollate, so a ``DataLoader`` may sit in between.
    ``d["series_uid"]`` (:data:`SERIES_KEY`), when given, picks the series of a DICOM folder for this item.
    """

    def __init__(self, keys: KeysCollection, original_key: str = "original", read_options=None,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

        self.original_key = original_key
        self.read_options = read_options or ReadOptions()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:

        d = dict(data)
        options = self.read_options
        if d.get(SERIES_KEY):
            options = dataclasses.replace(options, series_uid=str(d[SERIES_KEY]))
        for key in self.key_iterator(d):
            vol = read_ct(d[key], options)
            arr = torch.from_numpy(sitk_to_xyz_array(vol.image))[None]  # stored dtype (int16 HU): no copy
            d[key] = MetaTensor(arr, meta=volume_meta(vol))
            d[self.original_key] = MetaTensor(arr, meta=volume_meta(vol))
            if vol.slices is not None:  # a DICOM series: its files in the order of the third axis (for DICOM SEG)
                d["source_files"] = [s.path for s in vol.slices]
        return d


CTNormalizeD = CTNormalizeDict = CTNormalized
LoadCTD = LoadCTDict = LoadCTd
CropForegroundMMD = CropForegroundMMDict = CropForegroundMMd
LesionComponentsD = LesionComponentsDict = LesionComponentsd
CheckGeometryD = CheckGeometryDict = CheckGeometryd
ResampleToSpacingD = ResampleToSpacingDict = ResampleToSpacingd
