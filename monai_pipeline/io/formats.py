"""Mask output formats: one registry of writers, whose keys are the choices of ``infer --format``.

A format is a :class:`MaskFormat`: a name, the file-name suffix after the case id, a writer and a completeness
check. Adding one is one writer function and one :func:`register_format` call; the CLI, the batch runner's
resume rule and the prediction-folder layout pick it up from here. ``both`` is kept as an alias of
``nifti,dicom-seg``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from monai_pipeline.errors import InputError
from monai_pipeline.io.geometry import Geometry, header_geometry, xyz_array_to_sitk
from monai_pipeline.io.writer import write_image, write_mask


class MaskResult(Protocol):
    """What a writer needs of a prediction: the mask (uint8, (x, y, z)) on its input grid, its lesion rows and
    label map (value k = row k, the ``lesion`` numbers of ``lesions.csv``), for DICOM output the source series'
    slice files in the order of the third axis, and whether a SEG gets one segment or one per lesion."""

    case_id: str
    mask: np.ndarray
    geometry: Geometry
    lesions: list[dict]
    source_files: list[str] | None
    seg_segments: str

    def lesion_labels(self) -> np.ndarray: ...


@dataclass(frozen=True)
class MaskFormat:
    """A mask output format.

    Attributes:
        name: the ``--format`` choice.
        suffix: the file name after the case id (``<case_id><suffix>`` in the output folder).
        write: ``write(result, path, provenance) -> path``; atomic.
        needs_dicom_series: the input must be a DICOM series folder (a SEG references its source images).
        requires: the Python module the writer imports (checked before any work) and the pip extra providing it.
    """

    name: str
    suffix: str
    write: Callable[[MaskResult, Path, dict | None], Path]
    needs_dicom_series: bool = False
    requires: tuple[str, str] | None = None

    def is_complete(self, path: Path, geometry: Geometry) -> bool:
        """Whether ``path`` is a finished output of this format for an input on ``geometry``."""
        return path.is_file()


def mask_description(provenance: dict | None) -> str:
    """The NIfTI ``descrip`` (80 characters at most): which model and settings made the mask (hash prefixes)."""
    if not provenance:
        return "monai-pipeline"
    return f"monai-pipeline model={provenance['model_sha256'][:24]} settings={provenance['settings_sha256'][:24]}"


def _write_nifti(result: MaskResult, path: Path, provenance: dict | None) -> Path:
    return write_mask(result.mask, result.geometry, path, description=mask_description(provenance))


def _source_files(result: MaskResult, what: str) -> list[str]:
    if not result.source_files:
        raise InputError(result.case_id, f"{what} needs a DICOM series as input (its source images)")
    return result.source_files


def _write_seg(result: MaskResult, path: Path, provenance: dict | None) -> Path:
    from monai_pipeline.io.dicom_seg import write_dicom_seg  # imports highdicom, an optional extra

    files = _source_files(result, "DICOM SEG")
    if result.seg_segments == "lesion":
        volumes = {int(r["lesion"]): float(r["volume_mm3"]) for r in result.lesions}
        return write_dicom_seg(result.lesion_labels(), files, path, provenance, per_lesion=True, volumes_mm3=volumes)
    return write_dicom_seg(result.mask, files, path, provenance)


def _write_rtstruct(result: MaskResult, path: Path, provenance: dict | None) -> Path:
    from monai_pipeline.io.rtstruct import write_rtstruct

    files = _source_files(result, "RTSTRUCT")
    return write_rtstruct(result.lesion_labels(), result.geometry, files, path, provenance=provenance)


def _write_lesion_labels(result: MaskResult, path: Path, provenance: dict | None) -> Path:
    image = xyz_array_to_sitk(result.lesion_labels(), result.geometry)
    image.SetMetaData("ITK_FileNotes", mask_description(provenance)[:79])  # the NIfTI descrip
    return write_image(image, path)


@dataclass(frozen=True)
class NiftiFormat(MaskFormat):
    """NIfTI masks are complete when their header holds the input's grid (a partly written file does not)."""

    def is_complete(self, path: Path, geometry: Geometry) -> bool:
        if not path.is_file():
            return False
        try:
            return header_geometry(str(path)).matches(geometry, atol_mm=1e-3)
        except Exception:  # noqa: BLE001 - anything unreadable is simply not complete
            return False


#: every mask format by name, in the order the CLI lists them
MASK_FORMATS: dict[str, MaskFormat] = {}
#: names that stand for several formats
FORMAT_ALIASES = {"both": ("nifti", "dicom-seg")}


def register_format(fmt: MaskFormat) -> MaskFormat:
    """Add ``fmt`` to :data:`MASK_FORMATS` (replacing a format of the same name)."""
    MASK_FORMATS[fmt.name] = fmt
    return fmt


register_format(NiftiFormat("nifti", ".nii.gz", _write_nifti))
register_format(MaskFormat("dicom-seg", "_seg.dcm", _write_seg, needs_dicom_series=True,
                           requires=("highdicom", "dicom")))
register_format(MaskFormat("rtstruct", "_rtstruct.dcm", _write_rtstruct, needs_dicom_series=True))
register_format(NiftiFormat("lesion-labels", "_lesions.nii.gz", _write_lesion_labels))


def format_choices() -> list[str]:
    """What ``--format`` accepts: every registered format and every alias (a comma list of them too)."""
    return [*MASK_FORMATS, *FORMAT_ALIASES]


def parse_formats(text: str) -> tuple[str, ...]:
    """``"nifti"``, ``"both"`` or ``"nifti,dicom-seg"`` -> the format names, in registry order; ValueError naming
    the choices for anything else."""
    names: list[str] = []
    for part in (p.strip() for p in str(text).split(",")):
        expanded = FORMAT_ALIASES.get(part, (part,))
        unknown = [n for n in expanded if n not in MASK_FORMATS]
        if not part or unknown:
            raise ValueError(f"format must be one or more of {', '.join(format_choices())}, got {text!r}")
        names += expanded
    return tuple(n for n in MASK_FORMATS if n in names)


def check_format_inputs(fmt: str, inputs: list[str]) -> None:
    """Before any work: the formats of ``fmt`` can be written for ``inputs`` (their module is installed; a
    format that references its source series gets DICOM series folders). One InputError naming the problem."""
    for name in parse_formats(fmt):
        spec = MASK_FORMATS[name]
        if spec.requires is not None:
            module, extra = spec.requires
            if importlib.util.find_spec(module) is None:
                raise InputError(None, f"--format {fmt} needs {module}", hint=f"pip install 'monai-pipeline[{extra}]'")
        if spec.needs_dicom_series:
            for path in inputs:
                if not Path(path).is_dir():
                    raise InputError(path, f"--format {fmt} needs a DICOM series folder as input ({name} references "
                                     "its source images)", hint="use --format nifti for this input")
