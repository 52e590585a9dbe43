"""Path checks made before any work: inputs that are regular files or folders, outputs that can be written.

Every check raises :class:`~monai_pipeline.errors.InputError` naming the path and the problem, so the CLI prints
one line and exits 2 before reading a volume or loading a model. A named pipe, socket or device is refused
here: opening one would block forever or read garbage.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path

from monai_pipeline.errors import InputError

#: file name endings SimpleITK can write images to
WRITABLE_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR,
                                                                                      "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def check_input(path: str | Path) -> Path:
    """``path`` must exist and be a regular file or a folder (after following links)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(p, "is a symbolic link loop") from err
        if os.path.islink(p):
            raise InputError(p, f"is a broken symbolic link (its target {os.readlink(p)} does not exist)") from err
        if err.errno == errno.EACCES:
            raise InputError(p, "permission denied") from err
        if err.errno == errno.ENOTDIR:
            raise InputError(p, "does not exist (a parent is a file, not a folder)") from err
        raise InputError(p, "does not exist") from err
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise InputError(p, f"is {_kind(st.st_mode)}, not a regular file or folder")
    if stat.S_ISREG(st.st_mode) and not os.access(p, os.R_OK):
        raise InputError(p, "is not readable (permission denied)")
    return p


def _nearest_existing(p: Path) -> Path:
    q = p
    while not q.exists() and q != q.parent:
        if q.is_symlink():
            return q
        q = q.parent
    return q


def check_output_folder(path: str | Path) -> Path:
    """``path`` is, or can become, a writable folder: not an existing file, no file among its parents, and its
    nearest existing ancestor writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(p, "exists and is not a folder (an output folder is expected)")
    anc = _nearest_existing(p)
    if not anc.is_dir():
        raise InputError(p, f"cannot be created: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(p, f"is not writable ({anc} is read-only for this user)")
    return p


def check_output_file(path: str | Path, suffixes: Sequence[str] = WRITABLE_IMAGE_SUFFIXES) -> Path:
    """``path`` can be written as a file: a known suffix, not an existing folder, a writable parent."""
    p = Path(path)
    if suffixes and not str(p).lower().endswith(tuple(suffixes)):
        raise InputError(p, f"unknown output file type (expected {', '.join(suffixes)})")
    if p.is_dir():
        raise InputError(p, "is a folder; an output file name is expected")
    check_output_folder(p.parent)
    return p


def case_id_from_path(path: str | Path) -> str:
    """``/a/b/LIDC-0001.nii.gz`` -> ``LIDC-0001``; a DICOM folder gives its folder name."""
    name = Path(path).name
    for suf in (*WRITABLE_IMAGE_SUFFIXES, ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def extract_tar(archive: tarfile.TarFile, out: str | Path, members: Sequence[tarfile.TarInfo] | None = None) -> Path:
    """Extract ``members`` (default: all) of an open tar ``archive`` under ``out``; an absolute path, a path that
    leaves ``out``, or a device is refused (InputError naming the archive and member) before anything is written.

    Where Python has tar's "data" filter (3.11.4+, 3.10.12+) it does the checking; older interpreters get the
    same checks here, stricter on links (every link is refused, not only those pointing outside ``out``)."""
    out = Path(out)
    chosen = list(members) if members is not None else archive.getmembers()
    name = archive.name or "tar archive"
    if hasattr(tarfile, "data_filter"):
        for m in chosen:  # check every member first: extractall stops at the first bad one, part-way through
            try:
                tarfile.data_filter(m, str(out))
            except tarfile.FilterError as err:
                raise InputError(name, f"member {m.name!r} refused: {err}") from err
        archive.extractall(out, members=chosen, filter="data")
        return out
    root = out.resolve()
    for m in chosen:
        if not (m.isfile() or m.isdir()) or os.path.isabs(m.name) or not (root / m.name).resolve().is_relative_to(root):
            raise InputError(name, f"member {m.name!r} refused: a link, a device, or a path outside {out}")
    archive.extractall(out, members=chosen)  # noqa: S202 - every member checked above
    return out
