"""What every verb module of the CLI shares: :class:`Verb`, argument types, and path arguments whose checks are
declared where the argument is (:func:`path_argument`) and run before any work (:func:`check_declared_paths`).

Library imports in the CLI modules are deferred into the functions that need them (a measured reason):
``monai_pipeline.io`` alone imports SimpleITK and MONAI, 5.9 s on this project's machine, against 0.09 s for
``monai-pipeline --help`` and for argument errors, which answer without them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monai_pipeline.io.reader import ReadOptions


#: exit codes: a bad input or configuration (one line, nothing written); a batch with failed cases (the others
#: done); an internal error, a bug to report (sysexits' EX_SOFTWARE); 75 (preempted) and 130 (interrupted)
EXIT_INPUT, EXIT_PARTIAL, EXIT_INTERNAL = 2, 1, 70


@dataclass(frozen=True)
class Verb:
    """A subcommand: its name, one-line help, the function adding its arguments and the one running it (returns
    the exit status). ``teardown``: False ends the process without Python's teardown once ``run`` returned
    (:func:`~monai_pipeline.runtime.end_process`; every output must be written, closed and renamed by then)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    teardown: bool = True


#: where the declared path checks of a parser are kept (its defaults, so they reach the namespace)
PATH_CHECKS = "_path_checks"
#: kinds of path check: an existing file or folder; the one input of a verb whose several inputs are a batch
#: (checked only when there is one); a folder that can be written; a file that can be written (``suffixes``);
#: a file when its name ends with one of ``suffixes``, else a folder
PATH_KINDS = ("input", "single-input", "out-dir", "out-file", "out-dir-or-file")


def path_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup, *flags: str, check: str,
                  suffixes: Sequence[str] | None = None, **kwargs) -> argparse.Action:
    """``p.add_argument(*flags, type=Path, **kwargs)`` plus the check its value gets before any work."""
    if check not in PATH_KINDS:
        raise ValueError(f"check must be one of {PATH_KINDS}, got {check!r}")
    action = p.add_argument(*flags, type=kwargs.pop("type", Path), **kwargs)
    # argument groups share their parser's defaults, so the checks land on the parser's namespace
    declared = p.get_default(PATH_CHECKS) or ()
    p.set_defaults(**{PATH_CHECKS: (*declared, (action.dest, check, suffixes))})
    return action


def check_declared_paths(a: argparse.Namespace) -> None:
    """Every declared input exists and is a regular file or folder, then every output can be written (one
    :class:`~monai_pipeline.errors.InputError` naming the path)."""
    from monai_pipeline.io.paths import check_input, check_output_file, check_output_folder

    checks = getattr(a, PATH_CHECKS, None) or ()
    for dest, kind, _ in checks:
        value = getattr(a, dest, None)
        values = value if isinstance(value, list) else ([] if value is None else [value])
        if kind == "input" or (kind == "single-input" and len(values) == 1):
            for v in values:
                check_input(v)
    for dest, kind, suffixes in checks:
        value = getattr(a, dest, None)
        if value is not None and kind == "out-dir-or-file" and str(value).lower().endswith(tuple(suffixes or ())):
            check_output_file(value, suffixes)
        elif value is not None and kind in ("out-dir", "out-dir-or-file"):
            check_output_folder(value)
        elif value is not None and kind == "out-file":
            check_output_file(value, *(() if suffixes is None else (suffixes,)))


def _type(fn: Callable[[str], object], what: str) -> Callable[[str], object]:
    def parse(text: str):
        try:
            return fn(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err) or f"{what}: {text!r}") from err

    parse.__name__ = what
    return parse


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise ValueError(f"must be >= 1, got {v}")
    return v


def _finite(text: str, zero_allowed: bool) -> float:
    v = float(text)
    if not (v >= 0 if zero_allowed else v > 0) or v == float("inf"):
        raise ValueError(f"must be a number {'>=' if zero_allowed else '>'} 0, got {text}")
    return v


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as err:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {text!r}") from err
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must satisfy 0 <= I < N, got {text!r}")
    return i, n


def _overlap(text: str) -> float:
    v = float(text)
    if not 0 <= v < 1:
        raise ValueError(f"overlap must be >= 0 and < 1, got {v}")
    return v


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v <= 1:
        raise ValueError(f"must be in [0, 1], got {v}")
    return v


def _sections(text: str) -> tuple[str, ...]:
    from monai_pipeline.data.manifest import SECTIONS

    parts = tuple(s.strip() for s in text.split(",") if s.strip())
    if not parts or any(s not in SECTIONS for s in parts):
        raise ValueError(f"sections must be among {', '.join(SECTIONS)}, got {text!r}")
    return parts


def _folds(text: str) -> list[int]:
    try:
        folds = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as err:
        raise ValueError(f"folds must be comma-separated integers, got {text!r}") from err
    if not folds or min(folds) < 0:
        raise ValueError(f"folds must be integers >= 0, got {text!r}")
    return folds


def _device(text: str) -> str:
    if text not in ("cpu", "cuda", "auto") and not text.startswith("cuda:"):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {text!r}")
    return text


positive_int = _type(_positive, "positive integer")
positive_float = _type(lambda t: _finite(t, False), "positive number")
non_negative_float = _type(lambda t: _finite(t, True), "non-negative number")
shard = _type(_shard, "shard")
overlap = _type(_overlap, "overlap")
fraction = _type(_fraction, "fraction")
sections = _type(_sections, "sections")
folds = _type(_folds, "folds")
device = _type(_device, "device")
workers = _type(lambda t: "auto" if t == "auto" else _positive(t), "workers")
int_list = _type(lambda t: [int(v) for v in t.split(",") if v.strip()], "integer list")


def device_or_none(text: str) -> str | None:
    """``--device`` as the library takes it: None for ``auto``."""
    return None if text == "auto" else text


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device``: checked before any work (``cuda`` without a CUDA GPU is one line and exit 2)."""
    p.add_argument("--device", type=device, default="auto",
                   help="cpu, cuda, cuda:N or auto (default: cuda when a GPU is available, else cpu)")


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def add_read_options(p: argparse.ArgumentParser) -> None:
    """How awkward DICOM inputs are read."""
    g = p.add_argument_group("reading DICOM")
    g.add_argument("--series-uid", help="SeriesInstanceUID to read from a folder holding several series")
    g.add_argument("--allow-non-ct", action="store_true", help="read series whose modality is not CT")
    g.add_argument("--force", action="store_true", dest="allow_non_ct", help=argparse.SUPPRESS)  # the 0.1 spelling
    g.add_argument("--resample-nonuniform", action="store_true",
                   help="interpolate series with non-uniform spacing / missing slices instead of refusing them")
    g.add_argument("--allow-gantry-tilt", action="store_true", help="read tilted series anyway (approximate grid)")


def read_options(a: argparse.Namespace) -> ReadOptions:
    """The :class:`ReadOptions` of :func:`add_read_options`' arguments."""
    from monai_pipeline.io.reader import ReadOptions

    return ReadOptions(series_uid=a.series_uid, allow_non_ct=a.allow_non_ct,
                       nonuniform="resample" if a.resample_nonuniform else "error",
                       allow_gantry_tilt=a.allow_gantry_tilt)
