"""What training learns from: the keys of a manifest entry, the label of each ``training.label_mode`` (consensus,
soft reader agreement, any reader), the loss (deeply supervised when the network is) and the trainer's
``prepare_batch``. ``train`` and the bundle's
``train.json`` both use these."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from monai.engines.utils import default_prepare_batch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from monai_pipeline.config import PipelineConfig
from monai_pipeline.data.manifest import load_manifest
from monai_pipeline.errors import InputError

logger = logging.getLogger(__name__)


#: the keys of a manifest entry that reach the transforms; the others (orientation, source, background, fold,
#: ...) describe the case and differ between kinds of case, which batch collation would refuse
DATA_KEYS = ("image", "label", "case_id")
#: with ``training.label_mode`` soft or any-reader the label is the reader-count map of ``lidc-convert --per-reader``
#: (``label_readers``: how many readers marked each voxel) and ``n_readers`` the readers of the scan
READER_KEYS = ("n_readers",)


def data_keys(label_mode: str) -> tuple[str, ...]:
    """The entry keys the training transforms receive for ``label_mode``."""
    return DATA_KEYS if label_mode == "consensus" else DATA_KEYS + READER_KEYS


def training_labels(files: list[dict], label_mode: str, manifest: str | Path) -> list[dict]:
    """The training entries with the label of ``label_mode``: consensus keeps the manifest's ``label``; soft and
    any-reader train on ``label_readers`` (reader counts) and need ``n_readers`` (refused, naming the case and
    the fix, when a case lacks them)."""
    if label_mode == "consensus":
        return files
    out = []
    for f in files:
        if not f.get("label_readers") or not f.get("n_readers"):
            raise InputError(manifest, f"case {f.get('case_id')}: training.label_mode {label_mode} needs the readers' "
                             "labels (label_readers, n_readers) in the manifest",
                             hint="convert the LIDC data with lidc-convert --per-reader")
        out.append({**f, "label": f["label_readers"]})
    return out


class ReaderAgreementBatch:
    """``prepare_batch`` of the trainer for ``label_mode`` soft and any-reader: the batch's label holds reader
    counts (B, 1, x, y, z); any-reader trains on count > 0, soft on the two-channel target
    (1 - p, p) with p = count / n_readers, the fraction of the scan's readers marking the voxel (DiceCE with
    probability targets: MONAI's soft Dice and torch's cross-entropy with class probabilities)."""

    def __init__(self, label_mode: str):
        if label_mode not in ("soft", "any-reader"):
            raise ValueError(f"label_mode must be soft or any-reader here, got {label_mode!r}")
        self.label_mode = label_mode

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if self.label_mode == "any-reader":
            return image, (label > 0).to(label.dtype)
        n = torch.as_tensor(batchdata["n_readers"]).to(label.device, torch.float32).clamp(min=1)
        p = (label.float() / n.view(-1, *([1] * (label.ndim - 1)))).clamp(0.0, 1.0)
        return image, torch.cat([1.0 - p, p], dim=1)


class StackedDeepSupervisionLoss(DeepSupervisionLoss):
    """MONAI's :class:`~monai.losses.DeepSupervisionLoss` for a network whose training output stacks its heads on
    axis 1, ``(B, heads, C, x, y, z)`` with the full-resolution head first (DynUNet with ``deep_supervision``):
    the heads are scored against the same target and weighted 1, 1/2, 1/4, ... (MONAI's ``exp`` mode, nnU-Net's
    halving). A plain ``(B, C, x, y, z)`` output (evaluation mode) is scored by the wrapped loss alone."""

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.Tensor) and input.ndim == target.ndim + 1:
            input = list(torch.unbind(input, dim=1))
        return super().forward(input, target)


def build_loss(cfg: PipelineConfig) -> torch.nn.Module:
    """DiceCE on the softmax: against the one-hot label (consensus, any-reader) or the two-channel probability
    target of ``label_mode`` soft; over every head when the network is deeply supervised
    (:class:`StackedDeepSupervisionLoss`). ``train`` and the bundle's ``train.json`` both use it."""
    loss = DiceCELoss(to_onehot_y=cfg.training.label_mode != "soft", softmax=True)
    return StackedDeepSupervisionLoss(loss) if cfg.network.deep_supervision else loss


def build_prepare_batch(cfg: PipelineConfig):
    """The trainer's ``prepare_batch``: MONAI's default, or :class:`ReaderAgreementBatch` for soft/any-reader."""
    mode = cfg.training.label_mode
    return default_prepare_batch if mode == "consensus" else ReaderAgreementBatch(mode)


def bundle_training_files(datalist: str | Path, cfg: PipelineConfig, base_dir: str | Path | None = None) -> list[dict]:
    """The bundle's training entries: the datalist's training section (paths resolved from ``base_dir``, default
    the datalist's folder) with the
    label of ``training.label_mode`` (:func:`training_labels`) and only the keys the transforms need, as
    ``train`` builds them."""
    mode = cfg.training.label_mode
    files = training_labels(load_manifest(datalist, "training", base_dir=base_dir), mode, datalist)
    return [{k: f[k] for k in data_keys(mode) if k in f} for f in files]
