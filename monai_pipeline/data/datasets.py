"""Dataset layouts other tools write, read into manifest entries: an nnU-Net v2 raw dataset
(``dataset.json`` with ``channel_names``/``labels``/``file_ending``, ``imagesTr/<case>_0000<ending>``,
``labelsTr/<case><ending>``, optional ``imagesTs``) and a Medical Segmentation Decathlon task (``dataset.json``
whose ``training`` list pairs ``image`` and ``label`` paths and whose ``test`` list names images). Both are
single-channel CT here: a dataset with a second channel (``_0001``) is refused with one line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monai_pipeline.errors import InputError
from monai_pipeline.io.paths import case_id_from_path

logger = logging.getLogger(__name__)

#: the nnU-Net channel suffix of a single-channel dataset's images
NNUNET_CHANNEL = "_0000"


def dataset_kind(root: Path) -> str | None:
    """``"nnunet"``, ``"decathlon"`` or None (not a dataset root: no ``dataset.json`` beside ``imagesTr``)."""
    meta = root / "dataset.json"
    if not (meta.is_file() and (root / "imagesTr").is_dir()):
        return None
    data = _read_json(meta)
    return "decathlon" if isinstance(data.get("training"), list) else "nnunet"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(path, f"unreadable dataset.json ({err.__class__.__name__}: {err})") from err
    if not isinstance(data, dict):
        raise InputError(path, "dataset.json must hold an object")
    return data


def _check_ct(meta: Path, channels: dict) -> None:
    if len(channels) > 1:
        raise InputError(meta, f"has {len(channels)} input channels ({', '.join(map(str, channels.values()))}); "
                         "this pipeline reads single-channel CT")
    names = [str(v) for v in channels.values()]
    if names and names[0].upper() != "CT":
        logger.warning("%s: channel 0 is %r, not CT: HU windowing assumes CT", meta, names[0])


def nnunet_entries(root: Path) -> tuple[list[dict], list[dict]]:
    """(labelled, unlabelled test) entries ``{"case_id", "image", "label"?}`` of an nnU-Net v2 raw dataset, with
    absolute paths; every ``imagesTr`` case needs its ``labelsTr`` file."""
    meta = root / "dataset.json"
    data = _read_json(meta)
    _check_ct(meta, data.get("channel_names") or data.get("modality") or {})
    ending = str(data.get("file_ending", ".nii.gz"))

    def cases(folder: Path) -> list[tuple[str, Path]]:
        found = []
        for p in sorted(folder.glob(f"*{ending}")) if folder.is_dir() else []:
            stem = p.name[: -len(ending)]
            if not stem.endswith(NNUNET_CHANNEL):
                raise InputError(p, f"is not named <case>{NNUNET_CHANNEL}{ending} (nnU-Net's channel suffix)")
            found.append((stem[: -len(NNUNET_CHANNEL)], p))
        return found

    labelled = []
    for cid, image in cases(root / "imagesTr"):
        label = root / "labelsTr" / f"{cid}{ending}"
        if not label.is_file():
            raise InputError(image, f"has no label labelsTr/{label.name}")
        labelled.append({"case_id": cid, "image": str(image), "label": str(label)})
    if not labelled:
        raise InputError(root / "imagesTr", f"holds no <case>{NNUNET_CHANNEL}{ending} images")
    n = data.get("numTraining")
    if isinstance(n, int) and n != len(labelled):
        logger.warning("%s: numTraining is %d but imagesTr holds %d cases", meta, n, len(labelled))
    return labelled, [{"case_id": cid, "image": str(p)} for cid, p in cases(root / "imagesTs")]


def decathlon_entries(root: Path) -> tuple[list[dict], list[dict]]:
    """(labelled, unlabelled test) entries of a Decathlon task folder, paths made absolute from ``dataset.json``."""
    meta = root / "dataset.json"
    data = _read_json(meta)
    _check_ct(meta, data.get("modality") or {})

    def resolve(rel: str, what: str) -> str:
        path = (root / rel).resolve()
        if not path.is_file():
            raise InputError(meta, f"{what} {rel} does not exist")
        return str(path)

    labelled = []
    for i, item in enumerate(data["training"]):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise InputError(meta, f"training[{i}] must hold 'image' and 'label'")
        image = resolve(item["image"], "image")
        labelled.append({"case_id": case_id_from_path(image), "image": image, "label": resolve(item["label"], "label")})
    test = []
    for item in data.get("test") or []:
        rel = item["image"] if isinstance(item, dict) else item
        test.append({"case_id": case_id_from_path(rel), "image": resolve(rel, "test image")})
    return labelled, test


def dataset_entries(root: Path) -> tuple[list[dict], list[dict]]:
    """The entries of the dataset at ``root`` (see :func:`dataset_kind`)."""
    kind = dataset_kind(root)
    if kind is None:
        raise InputError(root, "is not an nnU-Net raw dataset or Decathlon task (no dataset.json beside imagesTr)")
    return nnunet_entries(root) if kind == "nnunet" else decathlon_entries(root)
