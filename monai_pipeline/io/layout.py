"""The prediction folder: one object owns the name of every file in it and the rule for a case being done.

A case ``<id>`` writes ``<id><suffix>`` for each mask format (:mod:`~monai_pipeline.io.formats`),
``<id>_lesions.csv``, ``<id>_candidates.csv``, ``<id>_stats.json``, optionally ``<id>_prob.nii.gz``,
``<id>_preview.png`` and ``png/<id>.png``, and last its done-marker ``.done/<id>.json`` (the geometry, the formats
and the provenance: model SHA-256 and settings). A batch adds ``lesions<tag>.csv``, ``summary<tag>.json``,
``failures<tag>.csv`` and ``timings<tag>.csv`` (``tag``: empty, ``.IofN`` for a shard, ``.rankR`` under torchrun).
The inference writers, the batch runner's resume, ``evaluate`` and ``report`` all ask this module (MONAI's
``FolderLayout`` plays the same part for its writers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_pipeline.io.formats import MASK_FORMATS, parse_formats
from monai_pipeline.io.geometry import Geometry
from monai_pipeline.io.writer import atomic_write_text

DONE_FOLDER = ".done"
#: the batch tables, by kind: ``<stem><tag>.<ext>``
BATCH_FILES = {"lesions": "lesions{tag}.csv", "summary": "summary{tag}.json", "failures": "failures{tag}.csv",
               "timings": "timings{tag}.csv"}


@dataclass(frozen=True)
class PredictionLayout:
    """The files of the prediction folder ``root`` (see the module docstring)."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def mask(self, case_id: str, fmt: str = "nifti") -> Path:
        """The mask file of ``case_id`` in format ``fmt`` (a name in ``MASK_FORMATS``)."""
        return self.root / f"{case_id}{MASK_FORMATS[fmt].suffix}"

    def lesions(self, case_id: str) -> Path:
        return self.root / f"{case_id}_lesions.csv"

    def candidates(self, case_id: str) -> Path:
        """Every candidate lesion with its score, those the operating point dropped too (``kept`` 0/1)."""
        return self.root / f"{case_id}_candidates.csv"

    def stats(self, case_id: str) -> Path:
        return self.root / f"{case_id}_stats.json"

    def probability(self, case_id: str) -> Path:
        return self.root / f"{case_id}_prob.nii.gz"

    def preview(self, case_id: str) -> Path:
        return self.root / f"{case_id}_preview.png"

    def overlay(self, case_id: str) -> Path:
        return self.root / "png" / f"{case_id}.png"

    def marker(self, case_id: str) -> Path:
        return self.root / DONE_FOLDER / f"{case_id}.json"

    def batch_file(self, kind: str, tag: str = "") -> Path:
        """A batch table (``kind`` in :data:`BATCH_FILES`) of the run tagged ``tag``."""
        return self.root / BATCH_FILES[kind].format(tag=tag)

    def case_files(self, case_id: str) -> list[Path]:
        """Every file a case may write, the done-marker last."""
        masks = [self.mask(case_id, f) for f in MASK_FORMATS]
        return [*masks, self.lesions(case_id), self.candidates(case_id), self.probability(case_id), self.stats(case_id),
                self.preview(case_id), self.overlay(case_id), self.marker(case_id)]

    def write_marker(self, case_id: str, geometry: Geometry, formats: str, provenance: dict | None) -> Path:
        """The done-marker: written last, after every other output of the case."""
        record = {"case_id": case_id, "geometry": geometry.to_dict(), "format": formats,
                  "provenance": provenance or {}}
        return atomic_write_text(self.marker(case_id), json.dumps(record, indent=1))

    def read_marker(self, case_id: str) -> dict[str, Any] | None:
        """The done-marker of a case, or None (missing or unreadable)."""
        path = self.marker(case_id)
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None

    def done_cases(self) -> list[str]:
        """The case ids that have a done-marker in this folder, sorted (one-scan runs as well as batches)."""
        folder = self.root / DONE_FOLDER
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def provenance(self, case_id: str) -> dict | None:
        """The provenance the done-marker records (None when there is none)."""
        rec = self.read_marker(case_id)
        return (rec.get("provenance") or None) if rec else None

    def is_complete(self, case_id: str) -> bool:
        """Done: the marker exists, the lesion table exists, and every format the marker names is complete (a
        NIfTI mask's header holds the marker's geometry)."""
        rec = self.read_marker(case_id)
        if rec is None or not self.lesions(case_id).is_file():
            return False
        try:
            formats = parse_formats(rec.get("format", "nifti"))
            geometry = Geometry.from_dict(rec["geometry"])
        except (ValueError, KeyError, TypeError):
            return False
        return all(MASK_FORMATS[f].is_complete(self.mask(case_id, f), geometry) for f in formats)

    def has_mask(self, case_id: str) -> bool:
        """Whether the NIfTI mask of ``case_id`` exists (what ``evaluate`` scores)."""
        return self.mask(case_id).exists()
