"""Glue between the MONAI bundle in ``bundles/lung_nodule_ct_segmentation`` and the library.

The bundle's JSON configs call these by ``$`` expressions, so the bundle and the CLI share one
implementation and one configuration: ``configs/pipeline.yaml`` in the bundle is an overlay on the package's
``default.yaml``, and a trained model placed in ``models/`` brings its own ``models/pipeline.yaml``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_pipeline.config import dump_config, load_config

MODEL_CONFIG = "models/pipeline.yaml"


def bundle_config(bundle_root: str | Path) -> dict:
    """The pipeline configuration of a bundle: defaults <- configs/pipeline.yaml <- models/pipeline.yaml."""
    root = Path(bundle_root)
    extra = root / MODEL_CONFIG
    return load_config(root / "configs" / "pipeline.yaml", extra if extra.is_file() else None)


def is_bundle_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return p.parent.name == "models" and (p.parent.parent / "configs" / "pipeline.yaml").is_file()


def save_model_config(cfg: dict, bundle_root: str | Path) -> Path:
    """Record the configuration a bundle model was trained with beside it (``models/pipeline.yaml``)."""
    return dump_config(cfg, Path(bundle_root) / MODEL_CONFIG)


def export_to_bundle(model_path: str | Path, bundle_root: str | Path) -> Path:
    """Drop a ``monai-pipeline train`` model into a bundle: ``models/model.pt`` (the state dict, as model-zoo
    checkpoints are) and ``models/pipeline.yaml`` (its configuration)."""
    from monai_pipeline.io.writer import atomic_path
    from monai_pipeline.networks import load_model_file

    net, blob = load_model_file(model_path)
    root = Path(bundle_root)
    with atomic_path(root / "models" / "model.pt") as tmp:
        torch.save(net.state_dict(), tmp)
    save_model_config(blob["config"], root)
    return root / "models" / "model.pt"


def inference_inputs(datalist: str | Path, dataset_dir: str | Path, section: str = "test") -> list[dict]:
    """Cases to infer: the ``section`` of the datalist (paths relative to ``dataset_dir``) when it exists and
    lists cases, else every NIfTI file and DICOM folder directly under ``dataset_dir`` (or its ``images/``)."""
    import json

    from monai.data import load_decathlon_datalist

    from monai_pipeline.data.manifest import case_id_from_path
    from monai_pipeline.errors import InputError
    from monai_pipeline.io.reader import is_image_path

    if Path(datalist).is_file() and json.loads(Path(datalist).read_text()).get(section):
        entries = load_decathlon_datalist(str(datalist), data_list_key=section, base_dir=str(dataset_dir))
        return [{"image": e["image"], "case_id": e.get("case_id") or case_id_from_path(e["image"])} for e in entries]
    base = Path(dataset_dir)
    base = base / "images" if (base / "images").is_dir() else base
    if not base.is_dir():
        raise InputError(base, "no datalist and no image folder to infer")
    found = sorted(p for p in base.iterdir() if is_image_path(p) and not p.name.startswith(".") and
                   not p.name.endswith(".json"))
    return [{"image": str(p), "case_id": case_id_from_path(p)} for p in found]


class SaveInInputGeometryd(MapTransform):
    """Bundle post-processing: a network-space label (``(1, X, Y, Z)`` after argmax) -> the input's own grid
    (one nearest-neighbour resampling) -> configured post-processing in mm -> ``<case_id>.nii.gz`` and
    ``<case_id>_lesions.csv`` in ``output_dir``, written atomically. The same code path as ``monai-pipeline infer``.
    """

    def __init__(self, keys: KeysCollection, output_dir: str | Path, config: dict, image_key: str = "image",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.config = config
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from monai_pipeline.data.manifest import case_id_from_path
        from monai_pipeline.inference import Prediction, resample_to_grid, write_prediction
        from monai_pipeline.io.geometry import sitk_to_xyz_array
        from monai_pipeline.io.reader import read_ct
        from monai_pipeline.postprocess import lesion_table, postprocess_from_config

        d = dict(data)
        image = d[self.image_key]
        source = image.meta["filename_or_obj"]
        case_id = d.get("case_id") or case_id_from_path(source)
        vol = read_ct(source)
        for key in self.key_iterator(d):
            label = np.asarray(d[key].detach().cpu())[0].astype(np.uint8)
            mask = sitk_to_xyz_array(resample_to_grid(label, np.asarray(image.affine, dtype=np.float64), vol.geometry))
            post = self.config["postprocess"]
            mask = postprocess_from_config(mask, vol.geometry.spacing, post)
            lesions = lesion_table(mask, vol.geometry, sitk_to_xyz_array(vol.image), int(post.get("connectivity", 26)))
            write_prediction(Prediction(str(case_id), mask, vol.geometry, lesions), self.output_dir)
        return d
