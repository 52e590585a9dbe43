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

import math
import weakref
from contextlib import nullcontext
from functools import lru_cache
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from scipy import ndimage

from monai_pipeline.config import PipelineConfig
from monai_pipeline.networks import inference_form
from monai_pipeline.transforms.pipeline import PATCH_PADDING


def mirrorings(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every combination of the spatial ``axes`` (0 = x) as tensor dims of ``(B, C, X, Y, Z)``, the identity
    first: 2^len(axes) mirrorings."""

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


def autocast_context(device: torch.device, bf16: bool | str, amp: bool = True):
    """fp16 autocast on CUDA (unless ``amp`` is false), bf16 on capable CPUs (per ``bf16``), otherwise nothing."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if use_cpu_bf16(bf16, device):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


#: how a window pads an input smaller than it (MONAI ``SlidingWindowInferer``'s ``padding_mode``): the edge voxels
#: repeated, as training pads its patches (:data:`~monai_pipeline.transforms.pipeline.PATCH_PADDING`). MONAI's
#: default, a constant 0, is air under the HU window: a chest scan of 14-40 slices then showed the network a slab
#: of body between two layers of air, which training never showed it, and the LIDC-shaped fold models marked
#: all soft tissue of such scans as nodule (docs/recipe.md, "Thin scans").
WINDOW_PADDING = PATCH_PADDING


def build_sliding_window(cfg: PipelineConfig, sw_device: str | torch.device | None = None,
                         device: str | torch.device | None = None,
                         roi_size: tuple[int,
                                         ...] | None = None, sw_batch_size: int | None = None) -> SlidingWindowInferer:
    """The configured ``SlidingWindowInferer`` (weights of the gaussian computed once at construction; an input
    smaller than the window padded by :data:`WINDOW_PADDING`).

    ``sw_device`` runs the windows (the network's device); ``device`` accumulates the full-volume output
    (``"cpu"`` lets a GPU infer volumes whose outputs would not fit in its memory); ``roi_size`` (voxels) and
    ``sw_batch_size`` (windows per network call) replace the configured ones.
    """
    inf = cfg.inference
    return SlidingWindowInferer(roi_size=roi_size or inf.roi_size, sw_batch_size=sw_batch_size or inf.sw_batch_size,
                                overlap=inf.overlap, mode=inf.mode, sigma_scale=inf.sigma_scale, sw_device=sw_device,
                                device=device, padding_mode=WINDOW_PADDING, progress=False)


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


#: TTA with ``tta_scope: candidates``: the plain pass's components (foreground probability above
#: ``inference.foreground_threshold``) are what the mirrored passes re-decide, together with their edge: the
#: voxels within this many voxels (network grid) of a component
TTA_EDGE_VOXELS = 2
#: ... each mirrored on a crop holding the region and this much context around it (voxels of the network grid)
TTA_CONTEXT_VOXELS = 12
#: crop sizes are rounded up to a multiple of this (what a UNet or SegResNet with up to four 2x downsamplings
#: needs to give an output of its input's size)
TTA_SIZE_MULTIPLE = 16
#: a TTA crop whose mirrorings hold at most this many windows' voxels together runs them as one batch
STACK_WINDOWS = 8


def _grow(box: tuple[slice, ...], margin: int, multiple: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` widened by ``margin`` voxels per side and rounded up to a multiple of ``multiple`` (centred),
    shifted to lie inside ``shape``; an axis shorter than that is taken whole."""
    out = []
    for b, n in zip(box, shape, strict=True):
        lo, hi = b.start - margin, b.stop + margin
        size = min(-(-(hi - lo) // multiple) * multiple, n)
        lo = max(0, min(lo - (size - (hi - lo)) // 2, n - size))
        out.append(slice(lo, lo + size))
    return tuple(out)


def tta_crops(fg: torch.Tensor, threshold: float, edge: int = TTA_EDGE_VOXELS,
              context: int = TTA_CONTEXT_VOXELS, multiple: int = TTA_SIZE_MULTIPLE) -> list:
    """Where mirroring TTA runs, from the plain pass's foreground probability ``fg`` ``(X, Y, Z)``: the candidates
    (``fg`` > ``threshold``) widened by ``edge`` voxels (a cube) form regions, each with a crop of its bounding box
    plus ``context`` voxels per side (rounded up to ``multiple``, inside the volume). Returns (crop, region)
    pairs: ``crop`` the slices of the box, ``region`` (bool, the crop's shape) the voxels of that region, whose
    probability the mirrored passes decide. Crops may overlap; regions do not."""

    cand = (fg > threshold).cpu().numpy()
    if not cand.any():
        return []
    near = ndimage.maximum_filter(cand.view(np.uint8), size=2 * edge + 1, mode="constant").view(bool)
    labels, _ = ndimage.label(near)
    shape = tuple(near.shape)
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        crop = _grow(box, context, multiple, shape)
        out.append((crop, torch.from_numpy(labels[crop] == i)))
    return out


class ProbabilityInferer(Inferer):
    """Class probabilities ``(B, C, X, Y, Z)`` (float32, on the stitching device) of a batch of preprocessed
    images: sliding window with the configured blending, softmax, and with ``cfg.inference.tta`` averaged over
    the mirrorings of ``tta_axes`` (every combination); under autocast (fp16 on CUDA, bf16 on capable CPUs
    unless ``bf16`` is false).

    ``tta_scope: volume`` mirrors the whole volume (2^n full passes). ``candidates`` runs the plain pass over
    the whole volume and the mirrored passes only on :func:`tta_crops`: each component the plain pass found
    (foreground probability above ``inference.foreground_threshold``) and its edge (:data:`TTA_EDGE_VOXELS`) are
    re-decided by the mean of all 2^n passes, each mirrored pass run on a crop with :data:`TTA_CONTEXT_VOXELS`
    of context (windows no larger than the crop); everywhere else the plain pass decides. Measured against the
    truth in ``docs/performance.md``, at a fraction of the cost of mirroring the whole volume: as accurate as it
    with one demo model, 0.03 mean Dice lower with another (a trade, model-dependent; ``tta_scope: volume``
    when accuracy matters more than time). When the crops together hold as many voxels as the volume (small
    volumes, a speckled prediction), the whole volume is mirrored instead.

    Args:
        cfg: the model's configuration (its ``inference`` section).
        device: where the network runs.
        stitch_device: where the full-volume output is accumulated (default: ``device``).
    """

    def __init__(self, cfg: PipelineConfig, device: str | torch.device,
                 stitch_device: str | torch.device | None = None):
        super().__init__()
        self.cfg = cfg
        self.device = torch.device(device)
        self.stitch_device = stitch_device or self.device
        self.window = build_sliding_window(cfg, sw_device=self.device, device=self.stitch_device)
        self._crop_windows: dict[tuple[int, ...], SlidingWindowInferer] = {}
        self.flips = mirrorings(tuple(cfg.inference.tta_axes)) if cfg.inference.tta else [()]
        self.scope = cfg.inference.tta_scope
        self.roi = tuple(cfg.inference.roi_size)
        self.bf16 = cfg.inference.bf16
        self.amp = cfg.inference.amp
        self.last_tta_fraction = 0.0  # voxels the mirrored passes covered in the last call / the volume's
        self._prepared: weakref.WeakSet = weakref.WeakSet()  # networks already in their inference form

    def prepare(self, network: torch.nn.Module) -> torch.nn.Module:
        """Put a network into its inference form, in place and once per network
        (:func:`~monai_pipeline.networks.inference_form`: channels-last memory, sub-pixel up-sampling on CPU), so
        that every door -- ``infer``, the Python API, the bundle's evaluator -- runs the same arithmetic. The
        form keeps the network's parameters (the same tensors) and ``state_dict``, so weights loaded or trained
        afterwards are used as they are."""
        if network not in self._prepared:
            inference_form(network, self.cfg.inference, self.device)
            self._prepared.add(network)
        return network

    def _window_for(self, shape: tuple[int, ...]) -> SlidingWindowInferer:
        """The sliding window for a ``shape`` input: windows no larger than the input rounded up to
        :data:`TTA_SIZE_MULTIPLE` (MONAI pads an input smaller than the window up to it), as many per network
        call as hold the voxels of one configured call (``sw_batch_size`` full windows)."""
        m = TTA_SIZE_MULTIPLE
        roi = tuple(min(r, -(-n // m) * m) for r, n in zip(self.roi, shape, strict=True))
        if roi == self.roi:
            return self.window
        if roi not in self._crop_windows:
            per_call = max(1, self.cfg.inference.sw_batch_size * math.prod(self.roi) // math.prod(roi))
            self._crop_windows[roi] = build_sliding_window(self.cfg, self.device, self.stitch_device, roi, per_call)
        return self._crop_windows[roi]

    def _mirrored_sum(self, x: torch.Tensor, network, flips: list) -> torch.Tensor:
        """Sum over ``flips`` of the softmax of the mirrored input's sliding-window output, per item of the batch
        ``x`` ``(B, 1, X, Y, Z)``. A small input (a TTA crop: at most :data:`STACK_WINDOWS` windows' voxels for
        all items and mirrorings together) runs all its mirrorings as one batch of one sliding window, each of
        whose network calls holds as many of them as one configured call's voxels (:meth:`_window_for`): fewer,
        fuller network calls, the same probabilities (docs/performance.md)."""
        window = self._window_for(tuple(x.shape[2:]))
        if len(flips) > 1 and x[:, 0].numel() * len(flips) <= STACK_WINDOWS * math.prod(self.roi):
            b = x.shape[0]
            stacked = torch.cat([torch.flip(x, axes) if axes else x for axes in flips])
            out = torch.softmax(window(stacked, network).float(), dim=1)
            parts = (out[i * b:(i + 1) * b] for i in range(len(flips)))
            return sum((torch.flip(o, axes) if axes else o for o, axes in zip(parts, flips, strict=True)),
                       torch.zeros_like(out[:b]))
        acc = None
        for axes in flips:
            xi = torch.flip(x, axes) if axes else x
            out = torch.softmax(window(xi, network).float(), dim=1)
            out = torch.flip(out, axes) if axes else out
            acc = out if acc is None else acc + out
        return acc

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        x = x.to(self.device)
        network = self.prepare(network)
        n = len(self.flips)
        with autocast_context(self.device, self.bf16, self.amp):
            if n == 1 or self.scope == "volume":
                self.last_tta_fraction = 1.0 if n > 1 else 0.0
                return self._mirrored_sum(x, network, self.flips) / n
            plain = self._mirrored_sum(x, network, [()])
            out = plain.clone()
            fraction = 0.0
            for b in range(x.shape[0]):
                crops = tta_crops(plain[b, 1:].sum(0), self.cfg.inference.foreground_threshold)
                covered = sum(r.numel() for _, r in crops) / float(x[0, 0].numel())
                if covered >= 1.0:  # mirror the whole volume, reusing the plain pass
                    out[b] = (plain[b] + self._mirrored_sum(x[b:b + 1], network, self.flips[1:])[0]) / n
                    fraction += 1.0
                    continue
                fraction += covered
                for box, region in crops:
                    sub = (slice(b, b + 1), slice(None), *box)
                    mirrored = self._mirrored_sum(x[sub], network, self.flips[1:])
                    mean = (plain[sub] + mirrored) / n
                    keep = region.to(out.device)[None, None]
                    out[sub] = torch.where(keep, mean, out[sub])  # crops may overlap: keep what others decided
            self.last_tta_fraction = fraction / x.shape[0]
        return out
