"""What this installation runs on (``monai-pipeline doctor``): Python, torch and its CUDA/cuDNN, the GPUs, MONAI,
SimpleITK and the optional packages, CPU bf16 support, free memory and disk, and whether the optional reference
data beside a source checkout exist. MONAI's ``print_config()`` plays the same part for MONAI alone.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

#: distributions reported by name: (distribution, what it is for)
PACKAGES = (("monai", "networks, transforms, engines"), ("torch", "the network"),
            ("SimpleITK", "reading and resampling images"), ("pydicom", "DICOM headers"),
            ("nibabel", "NIfTI headers"), ("pytorch-ignite", "training engines"),
            ("connected-components-3d", "fast 3D labelling (post-processing)"),
            ("highdicom", "DICOM SEG output: pip install 'monai-pipeline[dicom]'"),
            ("tensorboard", "training curves in TensorBoard: pip install 'monai-pipeline[tensorboard]'"),
            ("fire", "python -m monai.bundle run: pip install 'monai-pipeline[bundle]'"))
#: optional data beside a source checkout (tests, the demo's real-CT check, the LIDC demo), relative to it
OPTIONAL_DATA = {"real CT scans with lung masks": "../shared/realct", "LIDC-IDRI XML reads": "../shared/lidc"}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def source_revision() -> str | None:
    """``git describe --always --dirty`` of the checkout this package runs from (an editable or source install),
    so provenance tells apart code between two version bumps; None for an installed wheel or without git."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def available_memory_gib() -> float | None:
    """``MemAvailable`` of ``/proc/meminfo`` in GiB (Linux: free plus reclaimable memory), else None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return None


def memory_gib() -> tuple[float | None, float | None]:
    """(total, available) physical memory in GiB (None where the OS does not say)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        total = None
    return total, available_memory_gib()


def _gpus() -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        prop = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        out.append({"index": i, "name": prop.name, "memory_gib": round(total / 2**30, 1),
                    "free_gib": round(free / 2**30, 1), "capability": f"{prop.major}.{prop.minor}",
                    "bf16": torch.cuda.is_bf16_supported()})
    return out


def environment(checkout: Path | None = None) -> dict:
    """The facts above as a dictionary (JSON-ready). ``checkout``: the source tree whose optional data to look for
    (default: the one this package was imported from, when it is a checkout)."""
    import torch

    from monai_pipeline import __version__
    from monai_pipeline.inferers import cpu_has_bf16

    checkout = checkout or Path(__file__).resolve().parents[1]
    total, available = memory_gib()
    return {
        "monai-pipeline": __version__, "source_revision": source_revision(),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "packages": {dist: _version(dist) for dist, _ in PACKAGES},
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpus": _gpus(), "cpu_count": os.cpu_count(), "cpu_bf16": cpu_has_bf16(),
        "memory_gib": round(total, 1) if total else None,
        "memory_available_gib": round(available, 1) if available else None,
        "disk_free_gib": round(shutil.disk_usage(Path.cwd()).free / 2**30, 1),
        "optional_data": {name: (checkout / rel).resolve().is_dir() for name, rel in OPTIONAL_DATA.items()},
    }


def format_environment(env: dict) -> str:
    """The report as aligned lines, with a note for each missing optional package and a verdict on the GPU."""
    revision = f" (source {env['source_revision']})" if env.get("source_revision") else ""
    lines = [f"monai-pipeline {env['monai-pipeline']}{revision}  Python {env['python']}  {env['platform']}"]
    for dist, why in PACKAGES:
        version = env["packages"].get(dist)
        lines.append(f"  {dist:<26} {version or 'not installed':<14} {why}")
    gpus = env["gpus"]
    cuda = env["torch_cuda"] or "none (a CPU build of torch)"
    lines.append(f"  {'torch CUDA / cuDNN':<26} {cuda} / {env['cudnn'] or 'n/a'}")
    for g in gpus:
        lines.append(f"  GPU {g['index']}: {g['name']}, {g['memory_gib']} GiB ({g['free_gib']} free), "
                     f"compute {g['capability']}, bf16 {'yes' if g['bf16'] else 'no'}")
    if not gpus:
        lines.append("  GPU: none visible: --device cpu (for a GPU, install a CUDA build of torch, see the README)")
    lines.append(f"  CPU: {env['cpu_count']} cores, native bf16 {'yes' if env['cpu_bf16'] else 'no'}; memory "
                 f"{env['memory_gib']} GiB ({env['memory_available_gib']} available); disk free here "
                 f"{env['disk_free_gib']} GiB")
    for name, present in env["optional_data"].items():
        lines.append(f"  optional data, {name}: {'found' if present else 'absent (only the developer tests use it)'}")
    return "\n".join(lines)
