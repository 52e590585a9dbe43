"""From a dataset fingerprint to a configuration overlay, each choice with its reason (nnU-Net's planning, with
this project's settings and a measured time budget).

The rules, in order (axes x, y, z of the RAS array; spacings in mm, sizes in voxels):

1. target spacing: the median spacing per axis; where the coarsest axis is more than 3 times the finest
   (anisotropic scans), that axis takes its 10th percentile instead (nnU-Net's rule).
2. network: MONAI ``UNet``; an axis is halved at a level while its feature map keeps at least 8 voxels and its
   spacing is at most twice the finest axis' (so a coarse z axis waits for x and y: anisotropic strides, as
   nnU-Net); at most 5 levels.
   Features start at 32 on a GPU (nnU-Net), 16 on a CPU, double per level, at most 320.
3. patch: starts at the median lung-crop extent (the network sees the lung crop; x = y, as the 90-degree
   rotations in the x-y plane need) and shrinks, largest axis in mm
   first, until the estimated training memory fits the budget; on a CPU also until no axis exceeds the context
   the lesions need (3 times the 95th-percentile lesion diameter, at least 48 mm), since time, not memory,
   limits a CPU. Every axis is a multiple of its total stride.
4. patches per step: 2 (nnU-Net's minimum), more on a GPU while memory allows and the step covers at most 5 %
   of the dataset's voxels (nnU-Net's rule).
5. normalisation: a HU window from at most -1000 to at least 400 HU that holds the foreground's 0.5-99.5 %
   range: nodules sit in aerated lung, whose contrast a window on the foreground alone would clip away.
6. sampling: every lesion equally often when cases hold several lesions or sizes spread more than 3-fold
   (small nodules would otherwise be rare), otherwise positive/negative patches 1:1.
7. epochs: a time budget divided by the measured seconds of one training step of the planned network on the
   device (15 % kept for validation and loading), or the number asked for.
8. false-positive reduction (``training.fp_reduction``): on when a validation fold (a fifth of the cases, as in
   5-fold cross-validation) holds at least 10 lesions, so that the second-stage classifier's 7 weights are fitted
   on at least 10 hits; otherwise the default (off).
9. prediction: mirroring test-time augmentation on (``inference.tta``), as nnU-Net predicts by default; on the
   candidates' crops it costs about 2.5 times the plain prediction on a CPU, and it raised nodule Dice on
   LIDC-shaped studies no setting was chosen on from 0.31 to 0.40 (docs/recipe.md, "The decision threshold").

Training memory is estimated as ``BYTES_PER_ACTIVATION`` bytes per feature-map element summed over levels per
patch: 3-5 times the 7-10 bytes measured for MONAI's UNet (forward and backward, fp32, AdamW) on this project's
CPU (``tests/planning``), the margin for cuDNN workspaces and allocator fragmentation on a GPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

#: rule 8: folds of the cross-validation the plan is made for, and the lesions a validation fold needs to fit the
#: second stage on
CV_FOLDS, MIN_LESIONS_PER_FOLD = 5, 10
#: bytes per feature-map element, summed over levels, of one training step (see the module docstring)
BYTES_PER_ACTIVATION = 32
MAX_LEVELS = 5
MIN_FEATURE_VOXELS = 8
MAX_FEATURES = 320
#: a step's patches may cover at most this fraction of the dataset's voxels (nnU-Net)
MAX_BATCH_FRACTION = 0.05
#: time kept for validation, loading and checkpoints when epochs come from a budget
BUDGET_RESERVE = 0.15


@dataclass
class Choice:
    """One planned setting: its dotted key in the configuration, its value and the reason."""

    key: str
    value: Any
    reason: str


@dataclass
class Plan:
    """The choices of :func:`plan`, in the order they are written."""

    choices: list[Choice] = field(default_factory=list)
    header: list[str] = field(default_factory=list)

    def add(self, key: str, value: Any, reason: str) -> None:
        self.choices.append(Choice(key, value, reason))

    def overlay(self) -> dict[str, Any]:
        """The nested configuration overlay (what ``train --config`` merges over the defaults)."""
        out: dict[str, Any] = {}
        for c in self.choices:
            *parents, leaf = c.key.split(".")
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = c.value
        return out

    def to_yaml(self) -> str:
        """The overlay as YAML (keys ``section.name``), each choice's reason as a comment above it."""
        lines = [f"# {h}" for h in self.header]
        sections = list(dict.fromkeys(c.key.split(".")[0] for c in self.choices))
        section = None
        for c in sorted(self.choices, key=lambda c: sections.index(c.key.split(".")[0])):
            top, name = c.key.split(".")
            if top != section:
                lines.append(f"{top}:")
                section = top
            text = yaml.safe_dump(c.value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
            lines += [f"  # {c.reason}", f"  {name}: {text}"]
        return "\n".join(lines) + "\n"


def target_spacing(fp: dict) -> tuple[list[float], str]:
    """Rule 1 of the module docstring."""
    median = [float(v) for v in fp["spacing_mm"]["median"]]
    p10 = [float(v) for v in fp["spacing_mm"]["p10"]]
    coarse = int(np.argmax(median))
    if median[coarse] > 3 * min(median):
        spacing = [p10[a] if a == coarse else median[a] for a in range(3)]
        return _round(spacing), (f"median spacing {_fmt(median)} mm is anisotropic (> 3x): axis {coarse} takes its "
                                 f"10th percentile {p10[coarse]:.3g} mm (nnU-Net's rule)")
    return _round(median), f"median spacing of the training cases {_fmt(median)} mm (nnU-Net's rule)"


def _round(v) -> list[float]:
    return [round(float(x), 3) for x in v]


def _fmt(v) -> str:
    return "x".join(f"{float(x):.3g}" for x in v)


def level_strides(patch: list[int], spacing: list[float]) -> list[list[int]]:
    """Rule 2's strides for ``patch`` voxels at ``spacing`` mm: one ``[sx, sy, sz]`` per down-sampling."""
    size, sp, strides = list(patch), list(spacing), []
    for _ in range(MAX_LEVELS):
        finest = min(sp)
        s = [2 if size[a] // 2 >= MIN_FEATURE_VOXELS and sp[a] <= 2 * finest else 1 for a in range(3)]
        if not any(v == 2 for v in s):
            break
        strides.append(s)
        size = [n // k for n, k in zip(size, s, strict=True)]
        sp = [x * k for x, k in zip(sp, s, strict=True)]
    return strides


def features(base: int, levels: int) -> list[int]:
    return [min(base * 2**i, MAX_FEATURES) for i in range(levels + 1)]


def activation_elements(patch: list[int], strides: list[list[int]], channels: list[int]) -> int:
    """Feature-map elements of one patch summed over the levels (the memory model's unit)."""
    size, total = list(patch), 0
    for i, ch in enumerate(channels):
        total += int(np.prod(size)) * ch
        if i < len(strides):
            size = [n // k for n, k in zip(size, strides[i], strict=True)]
    return total


def training_memory_bytes(patch: list[int], strides: list[list[int]], channels: list[int], patches: int) -> int:
    """The estimated memory of one training step (see the module docstring)."""
    return BYTES_PER_ACTIVATION * patches * activation_elements(patch, strides, channels)


def _fit_patch(start: list[int], spacing: list[float], base: int, budget_bytes: float, cap_mm: float | None,
               patches: int) -> tuple[list[int], list[list[int]]]:
    """Rule 3: shrink the largest axis (in mm) until memory and the cap hold; axes multiples of their stride."""
    patch = list(start)
    while True:
        strides = level_strides(patch, spacing)
        total = [int(np.prod([s[a] for s in strides])) for a in range(3)]
        patch = [max(total[a], patch[a] // total[a] * total[a]) for a in range(3)]
        mm = [patch[a] * spacing[a] for a in range(3)]
        over_cap = cap_mm is not None and max(mm) > cap_mm + 1e-6
        channels = features(base, len(strides))
        fits = training_memory_bytes(patch, strides, channels, patches) <= budget_bytes
        if (fits and not over_cap) or max(patch) <= 16:
            return patch, strides
        a = int(np.argmax(mm))
        patch[a] = max(16, int(patch[a] * 0.9))
        if a < 2:  # x and y shrink together: square in-plane patches (the 90-degree rotation augmentation)
            patch[1 - a] = patch[a]


def plan(fingerprint: dict, device: str = "cpu", memory_gb: float = 4.0, time_budget_min: float | None = None,
         epochs: int | None = None, step_seconds: float | None = None, measure: bool = True) -> Plan:
    """The plan for ``fingerprint`` (its ``summary``) on ``device`` (``cpu`` or ``cuda``) with ``memory_gb`` of
    memory for training; epochs from ``epochs``, or from ``time_budget_min`` and the seconds of one step
    (``step_seconds``, or measured on the device when ``measure``). See the module docstring."""
    fp = fingerprint["summary"]
    gpu = device.startswith("cuda")
    out = Plan()
    spacing, why = target_spacing(fp)
    out.add("preprocessing.target_spacing", spacing, why)
    out.add("preprocessing.crop", "lungs", "nodules lie in the lungs: the network sees the lung crop only")
    lo = min(-1000.0, math.floor(fp["foreground_hu"]["p00_5"]))
    hi = max(400.0, math.ceil(fp["foreground_hu"]["p99_5"]))
    out.add("preprocessing.normalization", "window", "CT in HU: a fixed window (rule 5)")
    out.add("preprocessing.hu_window", [float(lo), float(hi)],
            f"holds the foreground's 0.5-99.5 % range {fp['foreground_hu']['p00_5']:.0f}.."
            f"{fp['foreground_hu']['p99_5']:.0f} HU and the lung's air-tissue contrast")
    extent = [float(v) for v in fp["lung_extent_mm"]["median"]]
    start = [max(16, int(round(e / s))) for e, s in zip(extent, spacing, strict=True)]
    start[0] = start[1] = max(start[0], start[1])  # square in-plane (rotations by 90 degrees in x-y)
    d95 = float(fp["lesions"]["diameter_mm"]["p95"])
    cap = None if gpu else max(48.0, 3 * d95)
    base = 32 if gpu else 16
    budget = memory_gb * 2**30
    patches = 2
    patch, strides = _fit_patch(start, spacing, base, budget, cap, patches)
    channels = features(base, len(strides))
    step_voxels = int(np.prod(patch))
    dataset_voxels = fp["n_cases"] * float(np.prod([e / s for e, s in zip(extent, spacing, strict=True)]))
    while gpu and training_memory_bytes(patch, strides, channels, patches + 2) <= budget and \
            (patches + 2) * step_voxels <= MAX_BATCH_FRACTION * dataset_voxels:
        patches += 2
    mem = training_memory_bytes(patch, strides, channels, patches) / 2**30
    cap_text = f"; capped at {cap:.0f} mm (3x the 95th-percentile lesion diameter {d95:.1f} mm) on a CPU" \
        if cap else ""
    out.add("patch.size", patch, f"from the median lung-crop extent {_fmt(extent)} mm, shrunk to fit "
            f"{memory_gb:g} GiB (estimated {mem:.2f} GiB for {patches} patches){cap_text}")
    out.add("patch.num_samples", 2, "patches drawn per volume per step")
    out.add("training.batch_size", patches // 2, f"{patches} patches per step (rule 4)")
    many = fp["lesions"]["per_case"] > 1.5 or \
        fp["lesions"]["diameter_mm"]["p95"] > 3 * max(fp["lesions"]["diameter_mm"]["min"], 1e-3)
    if many:
        out.add("patch.sampling", "lesion", f"{fp['lesions']['per_case']:.1f} lesions per case, diameters "
                f"{fp['lesions']['diameter_mm']['min']:.1f}-{fp['lesions']['diameter_mm']['max']:.1f} mm: every "
                "lesion sampled equally often")
    else:
        out.add("patch.sampling", "posneg", "about one lesion per case of similar sizes: positive/negative 1:1")
        out.add("patch.pos", 1.0, "positive weight")
        out.add("patch.neg", 1.0, "negative weight")
    norm = "instance"
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": channels, "strides": strides,
              "num_res_units": 1, "norm": norm}
    out.add("network.name", "UNet", "MONAI's UNet (residual units)")
    out.add("network.kwargs", kwargs, f"{len(strides)} down-samplings with strides {strides} (feature maps of at "
            f"least {MIN_FEATURE_VOXELS} voxels, spacings evened out), features {channels[0]}..{channels[-1]}; "
            "instance norm, as nnU-Net")
    out.add("inference.roi_size", patch, "the training patch (nnU-Net)")
    out.add("inference.tta", True, "mirroring at prediction, as nnU-Net predicts (rule 9)")
    steps_per_epoch = max(1, math.ceil(fp["n_cases"] / (patches // 2)))
    if epochs is None:
        if time_budget_min is None:
            raise ValueError("give a time budget (time_budget_min) or a number of epochs")
        if step_seconds is None and measure:
            step_seconds = measure_step_seconds(kwargs, patch, patches, device)
        if step_seconds is None:
            raise ValueError("the seconds of one training step are needed: measure them or give step_seconds")
        epochs = max(1, int(time_budget_min * 60 * (1 - BUDGET_RESERVE) / (step_seconds * steps_per_epoch)))
        out.add("training.epochs", epochs, f"{time_budget_min:g} min budget, {int(BUDGET_RESERVE * 100)} % kept for "
                f"validation: {step_seconds:.3g} s per step (measured on {device}) x {steps_per_epoch} steps/epoch")
    else:
        out.add("training.epochs", int(epochs), "as asked")
    out.add("training.val_interval", max(1, epochs // 10), "ten validations over the run")
    out.add("training.amp", True, "fp16 autocast on CUDA GPUs")
    per_fold = fp["lesions"]["n"] / CV_FOLDS
    if per_fold >= MIN_LESIONS_PER_FOLD:
        out.add("training.fp_reduction", True, f"{per_fold:.0f} lesions per validation fold (of {CV_FOLDS}): "
                "enough hits to fit the second-stage candidate classifier (rule 8)")
    return out


def measure_step_seconds(kwargs: dict, patch: list[int], patches: int, device: str, steps: int = 3) -> float:
    """Seconds of one training step (forward, loss, backward, AdamW) of the planned network on ``device``, random
    data, after one warm-up step; data loading is not included."""
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    dev = torch.device(device)
    net = UNet(**kwargs).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(patches, 1, *patch, device=dev)
    y = (torch.rand(patches, 1, *patch, device=dev) > 0.9).float()
    use_amp = dev.type == "cuda"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, enabled=use_amp):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps
