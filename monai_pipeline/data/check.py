"""``monai-pipeline check``: verify a dataset before any training, and list every problem at once.

Like nnU-Net's ``verify_dataset_integrity``, but always on (``train`` runs it before the first epoch) and never
stopping at the first problem. Errors (training would fail or learn from garbage): manifest entries that are not
objects or lack an image, duplicate case ids, a patient in two folds or in both training and test, files that
cannot be read, an image and label on different grids, label values outside ``0..n_classes-1``. Warnings (worth
a look, not fatal): empty labels (allowed in training: counted), spacing or intensity outliers (robust z-score
of the case's spacing or median HU against the dataset's above 5).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from monai_pipeline.data.manifest import resolve_annotation
from monai_pipeline.errors import InputError, PipelineError
from monai_pipeline.io.annotations import CACHE_DIR
from monai_pipeline.io.geometry import sitk_to_xyz_array
from monai_pipeline.io.paths import case_id_from_path
from monai_pipeline.io.reader import label_values, read_ct, read_label

logger = logging.getLogger(__name__)
SECTIONS = ("training", "validation", "test")
OUTLIER_Z = 5.0


@dataclass
class Problem:
    severity: str  # "error" | "warning"
    case_id: str
    message: str


@dataclass
class CheckReport:
    n_cases: int = 0
    problems: list[Problem] = field(default_factory=list)
    empty_labels: list[str] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def add(self, severity: str, case_id: str, message: str) -> None:
        self.problems.append(Problem(severity, case_id, message))

    def to_dict(self) -> dict:
        return {"n_cases": self.n_cases, "n_errors": len(self.errors), "n_warnings": len(self.warnings),
                "empty_labels": self.empty_labels, "problems": [asdict(p) for p in self.problems],
                "cases": self.stats}

    def format(self) -> str:
        lines = [f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) in {self.n_cases} case(s)"]
        lines += [f"{p.severity}: {p.case_id}: {p.message}" for p in self.problems]
        if self.empty_labels:
            lines.append(f"note: {len(self.empty_labels)} case(s) have an empty label (allowed in training)")
        return "\n".join(lines)


def _entries(manifest: Path, sections: tuple[str, ...], report: CheckReport) -> list[tuple[str, dict]]:
    """(section, entry) pairs with paths made absolute; structural problems are added to ``report``."""
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(manifest, f"not a readable JSON manifest ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict) or not any(k in data for k in SECTIONS):
        raise InputError(manifest, "not a decathlon-style manifest (no training/validation/test lists)")
    out = []
    for section in sections:
        items = data.get(section) or []
        if not isinstance(items, list):
            report.add("error", section, f"'{section}' must be a list, got {type(items).__name__}")
            continue
        for i, entry in enumerate(items):
            where = f"{section}[{i}]"
            if not isinstance(entry, dict):
                report.add("error", where, f"must be an object with 'image', got {type(entry).__name__}")
                continue
            if not isinstance(entry.get("image"), str):
                report.add("error", where, "has no 'image' path")
                continue
            e = dict(entry)
            for key in ("image", "label"):
                if isinstance(e.get(key), str):
                    e[key] = str((manifest.parent / e[key]).resolve())

            e.setdefault("case_id", case_id_from_path(e["image"]))
            out.append((section, e))
    return out


def _split_problems(entries: list[tuple[str, dict]], report: CheckReport) -> None:
    seen: dict[str, str] = {}
    folds: dict[str, set] = {}
    sections_of: dict[str, set] = {}
    for section, e in entries:
        cid = str(e["case_id"])
        if cid in seen:
            report.add("error", cid, f"case id appears twice ({seen[cid]} and {section})")
        seen[cid] = section
        pid = str(e.get("patient_id", cid))
        sections_of.setdefault(pid, set()).add(section)
        if section == "training" and "fold" in e:
            folds.setdefault(pid, set()).add(e["fold"])
    for pid, fs in sorted(folds.items()):
        if len(fs) > 1:
            report.add("error", pid, f"patient is in several folds ({', '.join(map(str, sorted(fs)))}): leakage "
                       "between training and validation")
    for pid, secs in sorted(sections_of.items()):
        if "test" in secs and len(secs) > 1:
            report.add("error", pid, f"patient is in test and in {', '.join(sorted(secs - {'test'}))}: leakage")


def _case(e: dict, n_classes: int, report: CheckReport, cache_dir: Path) -> dict | None:
    """Read one case (image as CT, label as label map: a DICOM SEG/RTSTRUCT label read onto the image's series,
    cached in ``cache_dir``); per-case statistics or None after an error."""

    cid = str(e["case_id"])
    try:
        img = read_ct(e["image"])
    except PipelineError as err:
        report.add("error", cid, str(err))
        return None
    hu = sitk_to_xyz_array(img.image)[::4, ::4, ::2]
    row = {"case_id": cid, "size": list(img.geometry.size), "spacing_mm": [round(s, 4) for s in img.geometry.spacing],
           "median_hu": float(np.median(hu)), "p99_5_hu": float(np.percentile(hu, 99.5))}
    if not e.get("label"):
        return row
    try:
        lab = read_label(resolve_annotation(e, cache_dir)["label"])
    except PipelineError as err:
        report.add("error", cid, str(err))
        return row
    if not lab.geometry.matches(img.geometry):
        report.add("error", cid, f"label grid differs from the image (size {lab.geometry.size} vs {img.geometry.size}, "
                   "or origin/spacing/direction)")
        return row
    values = label_values(lab.image)
    bad = [v for v in values if v >= n_classes]
    if bad:
        report.add("error", cid, f"label values {bad[:6]} outside 0..{n_classes - 1} ({e['label']})")
    if values == [0]:
        report.empty_labels.append(cid)
    row["label_values"] = values
    return row


def _outliers(stats: list[dict], report: CheckReport) -> None:
    if len(stats) < 5:
        return

    def robust_z(x: np.ndarray) -> np.ndarray:
        mad = np.median(np.abs(x - np.median(x))) * 1.4826
        return np.abs(x - np.median(x)) / max(mad, 1e-6 * max(1.0, abs(float(np.median(x)))))

    for axis, name in enumerate("xyz"):
        z = robust_z(np.asarray([s["spacing_mm"][axis] for s in stats]))
        for s, zi in zip(stats, z, strict=True):
            median = np.median([t["spacing_mm"][axis] for t in stats])
            if zi > OUTLIER_Z and abs(s["spacing_mm"][axis] / median - 1) > 0.5:
                report.add("warning", s["case_id"], f"spacing {name} {s['spacing_mm'][axis]} mm is an outlier")
    z = robust_z(np.asarray([s["median_hu"] for s in stats]))
    for s, zi in zip(stats, z, strict=True):
        if zi > OUTLIER_Z and abs(s["median_hu"] - np.median([t["median_hu"] for t in stats])) > 200:
            report.add("warning", s["case_id"], f"median intensity {s['median_hu']:.0f} HU is an outlier")


def check_dataset(manifest: str | Path, sections: tuple[str, ...] = SECTIONS, n_classes: int = 2,
                  case_ids: set[str] | None = None) -> CheckReport:
    """Every problem of the manifest's ``sections`` (only ``case_ids`` when given), see the module docstring."""
    manifest = Path(manifest)
    report = CheckReport()
    entries = _entries(manifest, sections, report)
    _split_problems(entries, report)
    for _, e in entries:
        if case_ids is not None and str(e["case_id"]) not in case_ids:
            continue
        report.n_cases += 1
        row = _case(e, n_classes, report, manifest.parent / CACHE_DIR)
        if row is not None:
            report.stats.append(row)
    _outliers(report.stats, report)
    return report
