"""The self-describing model file (``model.pt``).

A plain dict of tensors and primitives, loadable with ``torch.load(path, weights_only=True)`` on any machine:
``format`` (:data:`MODEL_FORMAT`), the weights (``state_dict``), the network spec (``{"name", "kwargs"}``), the
whole pipeline configuration (preprocessing, inference, post-processing), label names, the versions of the
software that made it, and what training adds (``trained_on``, ``validated_on``, ``training_data``,
``epochs_trained``, which ``weights`` it holds: ``final`` or ``best``, with the best validation Dice and epoch).
A MONAI bundle's ``models/model.pt`` (a bare state dict) loads too, with the network and configuration of its bundle.
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path

import monai
import numpy
import SimpleITK
import torch

from monai_pipeline import __version__
from monai_pipeline.config import KEEPS, PipelineConfig, bundle_config, config_from_model_dict, is_bundle_checkpoint
from monai_pipeline.environment import source_revision
from monai_pipeline.errors import InputError
from monai_pipeline.io.writer import atomic_path
from monai_pipeline.networks import build_network, unwrap

MODEL_FORMAT = "monai-pipeline-model/1"


def versions() -> dict[str, str]:
    """Versions of the software that made a result; ``monai_pipeline_source``: the git revision of a source
    checkout (absent for an installed wheel)."""
    revision = source_revision()
    return {"monai_pipeline": __version__, **({"monai_pipeline_source": revision} if revision else {}),
            "monai": monai.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "SimpleITK": SimpleITK.Version_VersionString(),
            "python": platform.python_version()}


def make_model_file(network: torch.nn.Module, config: PipelineConfig, extra: dict | None = None) -> dict:
    """The model file's content: tensors and plain data only (``weights_only=True`` loads it)."""
    state = {k: v.detach().cpu() for k, v in unwrap(network).state_dict().items()}
    data = config.to_dict()
    plain = json.loads(json.dumps({"network": data["network"], "config": data, "labels": data["labels"],
                                   "versions": {k: str(v) for k, v in versions().items()}, **(extra or {})}))
    return {"format": MODEL_FORMAT, "state_dict": state, **plain}


def save_model_file(path: str | Path, network: torch.nn.Module, config: PipelineConfig,
                    extra: dict | None = None) -> Path:
    with atomic_path(path) as tmp:
        torch.save(make_model_file(network, config, extra), tmp)
    return Path(path)


def read_model_file(path: str | Path) -> dict:
    """A model file's content, read with ``weights_only=True`` (a bundle checkpoint completed from its bundle);
    one :class:`InputError` naming the file for anything that is not a model file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model file does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any unpickling problem as a bad input
        raise InputError(path, f"not a loadable model file ({err.__class__.__name__})") from err
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        if isinstance(blob, dict) and is_bundle_checkpoint(path):  # a bundle's models/model.pt (bare state dict)
            cfg = bundle_config(path.parent.parent).to_dict()
            blob = {"format": MODEL_FORMAT, "state_dict": blob, "network": cfg["network"], "config": cfg,
                    "labels": cfg["labels"], "versions": {}}
        else:
            raise InputError(path, f"not a {MODEL_FORMAT} file, nor a bundle checkpoint (models/model.pt beside "
                             "configs/pipeline.yaml)")
    return blob


def model_config(path: str | Path) -> PipelineConfig:
    """The configuration a model file was trained with."""
    return config_from_model_dict(read_model_file(path)["config"])


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model file (:func:`read_model_file`); returns (network in eval mode on ``device``, the dict)."""
    blob = read_model_file(path)
    net = build_network(blob["network"])
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise InputError(path, f"weights do not fit the network spec ({str(err).splitlines()[0]})") from err
    return net.to(device).eval(), blob


#: manifest sources whose images are made up (phantom anatomy)
SYNTHETIC_SOURCES = ("synthetic", "lidc-synthetic")


def training_data_card(train_files: list[dict], slice_spacings_mm: list[float] | None = None) -> dict:
    """What a model was trained on, for its model file: case count and cases per manifest ``source``
    (``synthetic`` from ``synth``, ``real-background`` from ``synth --background``, ``lidc`` from ``lidc-convert``,
    ``lidc-synthetic`` from ``lidc-convert`` of ``synth --lidc-xml`` studies; ``unrecorded`` without one), and the
    range of the training scans' slice spacings (``slice_spacing_mm``: [min, max], mm) when they are given."""
    sources = Counter(str(f.get("source", "unrecorded")) for f in train_files)
    card = {"n_cases": len(train_files), "sources": dict(sorted(sources.items()))}
    if slice_spacings_mm:
        card["slice_spacing_mm"] = [float(min(slice_spacings_mm)), float(max(slice_spacings_mm))]
    return card


#: how far (as a factor) a scan's slice spacing may lie outside the training scans' range before ``infer`` warns
SLICE_SPACING_TOLERANCE = 1.25


def slice_spacing_range(blobs: list[dict]) -> tuple[float, float] | None:
    """The slice spacings (mm) the model files ``blobs`` (an ensemble's members) were trained on, as one range;
    None when one of them did not record it (older files)."""
    ranges = [(blob.get("training_data") or {}).get("slice_spacing_mm") for blob in blobs]
    if not ranges or any(r is None for r in ranges):
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def outside_training_spacing(spacing_mm: float, trained: tuple[float, float] | None) -> bool:
    """True when a scan's slice spacing (mm) lies more than :data:`SLICE_SPACING_TOLERANCE` times outside the
    ``trained`` range (False when the range was not recorded)."""
    if trained is None:
        return False
    low, high = trained
    return spacing_mm > high * SLICE_SPACING_TOLERANCE or spacing_mm < low / SLICE_SPACING_TOLERANCE


def synthetic_only(blob: dict) -> bool:
    """True when a model file says it was trained on synthetic phantoms alone (older files say nothing: False)."""
    card = blob.get("training_data") or {}
    sources = card.get("sources") or {}
    return bool(sources) and set(sources) <= set(SYNTHETIC_SOURCES)


def describe_training_data(blob: dict) -> str:
    """One line for people: what the model in ``blob`` was trained on."""
    card = blob.get("training_data")
    if not card:
        return "training data not recorded in this model file"
    parts = ", ".join(f"{n} {src}" for src, n in card["sources"].items())
    slices = card.get("slice_spacing_mm")
    spacing = "" if not slices else (f"; slices {slices[0]:.3g} mm apart" if slices[0] == slices[1] else
                                     f"; slices {slices[0]:.3g}-{slices[1]:.3g} mm apart")
    return f"trained on {card['n_cases']} case(s): {parts}{spacing}"


def kept_weights(blob: dict) -> str:
    """Which weights the model file ``blob`` holds: ``"final"`` (the last epoch's) or ``"best"`` (the best
    validation checkpoint). Files from before ``training.keep`` do not say: they held the best checkpoint when a
    validation ran (they record its epoch), else the last weights."""
    if blob.get("weights") in KEEPS:
        return blob["weights"]
    return "best" if blob.get("best_epoch") is not None else "final"
