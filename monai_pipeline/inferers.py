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


def mirrorings(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every combination of the spatial ``axes`` (0 = x) as tensor dims of ``(B, C, X, Y, Z)``, the identity
    first: 2^len(axes) mirrorings."""
    from itertools import combinations

    dims = [a + 2 for a in sorted(axes)]
    return [c for k in range(len(dims) + 1) for c in combinations(dims, k)]


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


#: TTA with ``tta_scope: candidates``: voxels whose plain-pass foreground probability exceeds this are candidates
TTA_CANDIDATE_PROBABILITY = 0.05
#: ... and each candidate is mirrored with this much context around it (voxels of the network grid)
TTA_CONTEXT_VOXELS = 16


def window_count(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Windows a sliding window of ``roi`` with ``overlap`` places over ``shape`` (as MONAI's scan intervals)."""
    import math

    count = 1
    for n, r in zip(shape, roi, strict=True):
        if n <= r:
            continue
        step = max(1, int(r * (1 - overlap)))
        count *= math.ceil((n - r) / step) + 1
    return count


def candidate_regions(fg: torch.Tensor, threshold: float, context: int, min_size: tuple[int, ...]) -> list:
    """Where mirroring TTA is worth running: the candidates (``fg`` > ``threshold``; ``fg`` a ``(X, Y, Z)``
    foreground probability) dilated by ``context`` voxels, as (box, region) pairs -- ``box`` the slices of one
    connected dilated region's bounding box, widened to at least ``min_size`` (the window, so no window is
    padded) within the volume; ``region`` its voxels inside the box (bool). Every voxel lies in at most one
    region."""
    import numpy as np
    from scipy import ndimage

    cand = (fg > threshold).cpu().numpy()
    if not cand.any():
        return []
    # dilation by a box of 2 * context + 1: a maximum filter on the coarse question "is a candidate near?"
    near = ndimage.maximum_filter(cand.astype(np.uint8), size=2 * context + 1, mode="constant") > 0
    labels, _ = ndimage.label(near)
    shape = near.shape
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        grown = []
        for b, n, m in zip(box, shape, min_size, strict=True):
            lo, hi, target = b.start, b.stop, min(m, n)
            if hi - lo < target:  # centre a window-sized box on the region, inside the volume
                lo = max(0, min(lo - (target - (hi - lo)) // 2, n - target))
                hi = lo + target
            grown.append(slice(lo, hi))
        grown = tuple(grown)
        out.append((grown, torch.from_numpy(labels[grown] == i)))
    return out


class ProbabilityInferer(Inferer):
    """Class probabilities ``(B, C, X, Y, Z)`` (float32, on the stitching device) of a batch of preprocessed
    images: sliding window with the configured blending, softmax, and with ``cfg.inference.tta`` averaged over
    the mirrorings of ``tta_axes`` (every combination); under autocast (fp16 on CUDA, bf16 on capable CPUs
    unless ``bf16`` is false).

    ``tta_scope: volume`` mirrors the whole volume (2^n full passes). ``candidates`` runs the plain pass over
    the whole volume and the mirrored passes only around its candidates (foreground probability above
    :data:`TTA_CANDIDATE_PROBABILITY`, with :data:`TTA_CONTEXT_VOXELS` of context; each region's box is at least
    one window): elsewhere every mirrored pass would have to turn a confident background into foreground to
    change the decision. It costs a fraction of the full TTA (measured in ``docs/performance.md``); when the
    regions' boxes need as many windows as the whole volume, the whole volume is mirrored instead.

    Args:
        cfg: the model's configuration (its ``inference`` section).
        device: where the network runs.
        stitch_device: where the full-volume output is accumulated (default: ``device``).
    """

    def __init__(self, cfg: PipelineConfig, device: str | torch.device, stitch_device: str | torch.device | None = None):
        super().__init__()
        self.device = torch.device(device)
        self.window = build_sliding_window(cfg, sw_device=self.device, device=stitch_device or self.device)
        self.flips = mirrorings(tuple(cfg.inference.tta_axes)) if cfg.inference.tta else [()]
        self.scope = cfg.inference.tta_scope
        self.roi = tuple(cfg.inference.roi_size)
        self.overlap = cfg.inference.overlap
        self.bf16 = cfg.inference.bf16
        self.last_tta_fraction = 0.0  # mirrored windows of the last call / those of a whole-volume TTA

    def _mirrored_mean(self, x: torch.Tensor, network, flips: list) -> torch.Tensor:
        acc = None
        for axes in flips:
            xi = torch.flip(x, axes) if axes else x
            out = torch.softmax(self.window(xi, network).float(), dim=1)
            out = torch.flip(out, axes) if axes else out
            acc = out if acc is None else acc + out
        return acc

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        x = x.to(self.device)
        n = len(self.flips)
        with autocast_context(self.device, self.bf16):
            if n == 1 or self.scope == "volume":
                self.last_tta_fraction = 1.0 if n > 1 else 0.0
                return self._mirrored_mean(x, network, self.flips) / n
            plain = self._mirrored_mean(x, network, [()])
            out = plain.clone()
            fraction = 0.0
            for b in range(x.shape[0]):
                regions = candidate_regions(plain[b, 1:].sum(0), TTA_CANDIDATE_PROBABILITY, TTA_CONTEXT_VOXELS,
                                            self.roi)
                whole = window_count(tuple(x.shape[2:]), self.roi, self.overlap)
                covered = sum(window_count(tuple(r.shape), self.roi, self.overlap) for _, r in regions) / whole
                if covered >= 1.0:
                    out[b] = self._mirrored_mean(x[b:b + 1], network, self.flips)[0] / n
                    fraction += 1.0
                    continue
                fraction += covered
                for box, region in regions:
                    sub = (slice(b, b + 1), slice(None), *box)
                    mirrored = self._mirrored_mean(x[sub], network, self.flips[1:])
                    mean = (plain[sub] + mirrored) / n
                    keep = region.to(out.device)[None, None]
                    out[sub] = torch.where(keep, mean, plain[sub])
            self.last_tta_fraction = fraction / x.shape[0]
        return out
