"""Inferers built from the configuration, shared by training (validation), inference and the bundle.

* :func:`build_sliding_window` -- MONAI ``SlidingWindowInferer`` as configured (roi size in voxels at the
  target spacing, overlap, gaussian blending).
* :class:`AutocastInferer` -- any inferer under ``torch.autocast`` (bf16 on capable CPUs, where MONAI's own
  ``amp`` flag does nothing because it is CUDA-only).
* :class:`ProbabilityInferer` -- what prediction runs: the sliding window, optional mirroring TTA, softmax,
  mixed precision; returns class probabilities ``(B, C, X, Y, Z)`` in float32. The CLI, the Python API and the
  bundle's inference all use this one class, so they compute the same numbers.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer

from monai_pipeline.config import PipelineConfig

#: the 7 non-trivial mirrorings of a (B, C, X, Y, Z) tensor
MIRROR_AXES = ((2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matrix support (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_cpu_bf16(setting: bool | str, device: torch.device) -> bool:
    """Resolve a ``bf16`` setting (true/false/"auto") for ``device``: auto = CPU with native bf16."""
    if device.type != "cpu":
        return False
    return setting is True or (setting == "auto" and cpu_has_bf16())


def autocast_context(device: torch.device, bf16: bool | str):
    """fp16 autocast on CUDA, bf16 on capable CPUs (per ``bf16``), otherwise nothing."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if use_cpu_bf16(bf16, device):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def build_sliding_window(cfg: PipelineConfig, sw_device: str | torch.device | None = None,
                         device: str | torch.device | None = None) -> SlidingWindowInferer:
    """The configured ``SlidingWindowInferer`` (weights of the gaussian computed once at construction).

    ``sw_device`` runs the windows (the network's device); ``device`` accumulates the full-volume output
    (``"cpu"`` lets a GPU infer volumes whose outputs would not fit in its memory).
    """
    inf = cfg.inference
    return SlidingWindowInferer(roi_size=inf.roi_size, sw_batch_size=inf.sw_batch_size, overlap=inf.overlap,
                                mode=inf.mode, sigma_scale=inf.sigma_scale, sw_device=sw_device, device=device,
                                progress=False)


class AutocastInferer(Inferer):
    """Runs another inferer under ``torch.autocast`` and returns float32. Weights and the optimiser stay
    float32; convolutions run in bf16 on CPUs with AVX512-BF16/AMX."""

    def __init__(self, base: Inferer, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.base, self.device_type, self.dtype = base, device_type, dtype

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.base(inputs, network, *args, **kwargs)
        return out.float()


class ProbabilityInferer(Inferer):
    """Class probabilities ``(B, C, X, Y, Z)`` (float32, on the stitching device) of a batch of preprocessed
    images: sliding window with the configured blending, softmax, averaged over the 8 mirrorings when
    ``cfg.inference.tta``, under autocast (fp16 on CUDA, bf16 on capable CPUs unless ``bf16`` is false).

    Args:
        cfg: the model's configuration (its ``inference`` section).
        device: where the network runs.
        stitch_device: where the full-volume output is accumulated (default: ``device``).
    """

    def __init__(self, cfg: PipelineConfig, device: str | torch.device, stitch_device: str | torch.device | None = None):
        super().__init__()
        self.device = torch.device(device)
        self.window = build_sliding_window(cfg, sw_device=self.device, device=stitch_device or self.device)
        self.tta = cfg.inference.tta
        self.bf16 = cfg.inference.bf16

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        x = x.to(self.device)
        flips = [(), *MIRROR_AXES] if self.tta else [()]
        acc = None
        with autocast_context(self.device, self.bf16):
            for axes in flips:
                xi = torch.flip(x, axes) if axes else x
                out = torch.softmax(self.window(xi, network).float(), dim=1)
                out = torch.flip(out, axes) if axes else out
                acc = out if acc is None else acc + out
        return acc / len(flips)
