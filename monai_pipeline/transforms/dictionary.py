"""Dictionary wrappers: thin ``keys``/``allow_missing_keys`` shells over :mod:`.array`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_pipeline.transforms.array import CTNormalize, check_same_geometry


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


class CheckGeometryd(MapTransform):
    """Fail at load time (not mid-training) when the grids of ``keys`` differ; the first key is the reference."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> Mapping[Hashable, object]:
        present = tuple(k for k in self.keys if k in data)
        if len(present) > 1:
            check_same_geometry(data, present)
        return data


CTNormalizeD = CTNormalizeDict = CTNormalized
CheckGeometryD = CheckGeometryDict = CheckGeometryd
