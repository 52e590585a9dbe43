"""Dictionary wrapper of :class:`~monai_pipeline.postprocess.array.PostprocessMask`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_pipeline.postprocess.array import PostprocessMask


class PostprocessMaskd(MapTransform):
    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs):
        super().__init__(keys, allow_missing_keys)
        self.op = PostprocessMask(**kwargs)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key])
        return d


PostprocessMaskD = PostprocessMaskDict = PostprocessMaskd
