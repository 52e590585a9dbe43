"""``monai-pipeline lidc-convert``: a TCIA LIDC-IDRI download -> NIfTI images, consensus labels, per-reader
masks, ``nodules.csv`` and a manifest with patient-level folds.

Resumable (a case whose ``cases/<case_id>.json`` record and files check out is skipped), parallel over
cases, one line per problem in ``convert.log``; a failing case never stops the others.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from monai_pipeline.data.manifest import assign_folds, relpath, write_manifest
from monai_pipeline.errors import InputError, PipelineError
from monai_pipeline.io import dicom
from monai_pipeline.io.geometry import Geometry, header_geometry, xyz_array_to_sitk
from monai_pipeline.io.reader import ReadOptions, read_ct
from monai_pipeline.io.writer import SYNTHETIC_MARK, atomic_write_text, write_image, write_mask
from monai_pipeline.lidc.nodules import SliceIndex, build_nodules, median_characteristics
from monai_pipeline.lidc.xml import CHARACTERISTICS, parse_read, read_series_uid
from monai_pipeline.postprocess.lesions import longest_axial_diameter

logger = logging.getLogger(__name__)

NODULE_FIELDS = ("case_id", "patient_id", "series_instance_uid", "nodule", "n_readers", "readers",
                 "consensus_volume_mm3", "diameter_mm", "equivalent_diameter_mm", "centroid_x_mm", "centroid_y_mm",
                 "centroid_z_mm", *(f"{c}_median" for c in CHARACTERISTICS))

#: findings that count neither as hit nor as false positive in detection scoring (LUNA16's irrelevant findings)
IRRELEVANT_FIELDS = ("case_id", "reason", "n_readers", "diameter_mm", "centroid_x_mm", "centroid_y_mm",
                     "centroid_z_mm")


@dataclass
class CaseTask:
    case_id: str
    patient_id: str
    series_uid: str
    folder: str
    xml: str
    out: str
    consensus: float
    min_diameter_mm: float
    min_readers: int
    per_reader: bool


def _dicom_folders(root: Path) -> list[Path]:
    """Folders that directly hold DICOM files (checked on one file per folder)."""
    out = []
    for d, _, names in os.walk(root):
        files = [n for n in names if not n.endswith(".xml") and not n.startswith(".")]
        first = os.path.join(d, files[0]) if files else None
        if any(n.lower().endswith(".dcm") for n in files) or (first and dicom._is_dicom_file(first)):
            out.append(Path(d))
    return sorted(out)


def discover(root: str | Path, xml_dir: str | Path | None = None) -> tuple[list[dict], list[str]]:
    """Match CT series to their XML read by SeriesInstanceUID. Returns (series records, notes)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "LIDC root folder does not exist")
    notes: list[str] = []
    xml_by_series: dict[str, list[str]] = defaultdict(list)
    for x in sorted(Path(xml_dir or root).rglob("*.xml")):
        try:
            info = read_series_uid(x)
        except InputError as err:
            notes.append(str(err))
            continue
        if info is None or info[0] != "LidcReadMessage":
            continue  # IdriReadMessage: chest-radiograph read
        if not info[1]:
            notes.append(f"{x}: no SeriesInstanceUid in the header, ignored")
            continue
        xml_by_series[info[1]].append(str(x))
    series = []
    for folder in _dicom_folders(root):
        for uid, s in dicom.scan_folder(folder).items():
            if s.modality != "CT":
                continue
            xmls = xml_by_series.get(uid)
            if not xmls:
                notes.append(f"{folder}: CT series {uid} has no XML read, skipped")
                continue
            if len(xmls) > 1:
                notes.append(f"series {uid}: {len(xmls)} copies of its read ({', '.join(Path(x).name for x in xmls)}); "
                             f"using {Path(xmls[0]).name}")
            series.append({"series_uid": uid, "patient_id": s.patient_id or folder.parent.parent.name,
                           "folder": str(folder), "xml": xmls[0]})
    found = {s["series_uid"] for s in series}
    for uid, xmls in xml_by_series.items():
        if uid not in found:
            notes.append(f"{xmls[0]}: no CT series with SeriesInstanceUID {uid} under {root}")
    return series, notes


def assign_case_ids(series: list[dict]) -> list[dict]:
    """``case_id`` = patient id, suffixed ``_s1``, ``_s2``... (by series UID) when a patient has several CTs."""
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for s in series:
        by_patient[s["patient_id"]].append(s)
    out = []
    for pid, ss in sorted(by_patient.items()):
        ss = sorted(ss, key=lambda s: s["series_uid"])
        for i, s in enumerate(ss, start=1):
            out.append({**s, "case_id": pid if len(ss) == 1 else f"{pid}_s{i}"})
    return out


def _slice_index(vol) -> tuple[SliceIndex, np.ndarray | None]:
    """Where each original slice lies on the volume's grid: (SOP UID -> slice index, z (mm) of every grid slice),
    plus, for a non-uniform series read onto a uniform grid, the grid slice that holds the nearest original
    slice for every grid slice (None when every grid slice is an original one)."""
    geom = vol.geometry
    if vol.slices is not None:
        if len(vol.slices) != geom.size[2]:
            raise PipelineError(f"{vol.source}: slices could not be matched to the series headers")
        # each slice's own z (ImagePositionPatient), as the rois' imageZposition were read off it
        return SliceIndex({sl.sop_instance_uid: k for k, sl in enumerate(vol.slices)},
                          np.array([float(sl.position[2]) for sl in vol.slices])), None
    if vol.source_slices is None or vol.source_slice_index is None:
        raise PipelineError(f"{vol.source}: the slice headers of the series are unknown")
    slots = np.clip(np.rint(vol.source_slice_index).astype(int), 0, geom.size[2] - 1)
    grid_k = np.arange(geom.size[2])
    z = geom.index_to_lps(np.stack([0 * grid_k, 0 * grid_k, grid_k], axis=1))[:, 2]  # grid slices' z, mm
    index = SliceIndex({sl.sop_instance_uid: int(k) for sl, k in zip(vol.source_slices, slots, strict=True)}, z)
    nearest = np.abs(grid_k[:, None] - np.asarray(vol.source_slice_index)[None, :]).argmin(axis=1)
    return index, slots[nearest]


def carry_along_slices(voxels: np.ndarray, shape: tuple[int, int, int], nearest_slot: np.ndarray | None) -> np.ndarray:
    """Nearest-neighbour resampling of a mask (linear voxel indices on an ``(x, y, k)`` grid) along the third
    axis of a non-uniform series' uniform grid: a grid slice ``j`` that holds no original slice
    (``nearest_slot[j] != j``) takes the mask of slice ``nearest_slot[j]`` (the grid slice holding the original
    slice nearest to it), unless an roi was placed on ``j`` itself (by its z position). Returns sorted unique
    linear indices; unchanged when ``nearest_slot`` is None."""
    if nearest_slot is None or len(voxels) == 0:
        return voxels
    x, y, k = np.unravel_index(voxels, shape)
    own = set(np.unique(k).tolist())
    parts = [voxels]
    for j in np.flatnonzero(nearest_slot != np.arange(len(nearest_slot))):
        if int(j) in own:
            continue
        sel = k == nearest_slot[j]
        if sel.any():
            parts.append(np.ravel_multi_index((x[sel], y[sel], np.full(int(sel.sum()), j)), shape))
    return np.unique(np.concatenate(parts)).astype(np.int64)


def _measure(vox: np.ndarray, geometry: Geometry) -> dict:

    shape = geometry.size
    idx = np.stack(np.unravel_index(vox, shape), axis=1)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    crop = np.zeros(hi - lo, bool)
    crop[tuple((idx - lo).T)] = True
    vol = len(vox) * float(np.prod(geometry.spacing))
    aff = geometry.lps_affine()
    c = aff[:3, :3] @ idx.mean(axis=0) + aff[:3, 3]
    return {"consensus_volume_mm3": round(vol, 3), "diameter_mm": round(longest_axial_diameter(crop, geometry.spacing),
                                                                        3),
            "equivalent_diameter_mm": round(float((6 * vol / np.pi) ** (1 / 3)), 3),
            "centroid_x_mm": round(float(c[0]), 3), "centroid_y_mm": round(float(c[1]), 3),
            "centroid_z_mm": round(float(c[2]), 3)}


def _finding(case_id: str, reason: str, measured: dict, n_readers: int | str = "") -> dict:
    return {"case_id": case_id, "reason": reason, "n_readers": n_readers, "diameter_mm": measured["diameter_mm"],
            "centroid_x_mm": measured["centroid_x_mm"], "centroid_y_mm": measured["centroid_y_mm"],
            "centroid_z_mm": measured["centroid_z_mm"]}


def _point_findings(read, index: SliceIndex, geometry: Geometry) -> list[dict]:
    """Readers' point marks (nodules < 3 mm and non-nodules) as irrelevant findings, centre in mm (LPS)."""
    aff = geometry.lps_affine()
    out = []

    def add(kind: str, x: int, y: int, sop: str, z: float) -> None:
        k = index.place(sop, z)
        if k is None:
            return
        c = aff[:3, :3] @ np.asarray([x, y, k], dtype=np.float64) + aff[:3, 3]
        out.append({"case_id": "", "reason": kind, "n_readers": 1, "diameter_mm": "",
                    "centroid_x_mm": round(float(c[0]), 3), "centroid_y_mm": round(float(c[1]), 3),
                    "centroid_z_mm": round(float(c[2]), 3)})

    for nr in read.nodule_reads:
        if nr.is_small:
            for roi in nr.rois:
                if len(roi.points):
                    add("nodule < 3 mm", int(roi.points[0][0]), int(roi.points[0][1]), roi.sop_uid, roi.z)
    for sess in read.sessions:
        for nn in sess.non_nodules:
            add("non-nodule", nn.x, nn.y, nn.sop_uid, nn.z)
    return out


def convert_case(task: CaseTask) -> dict:
    """Convert one series; returns its record (also written to ``cases/<case_id>.json`` as the done-marker)."""

    out = Path(task.out)
    read = parse_read(task.xml)
    # a non-uniform series (missing slices, a gap) is interpolated onto a uniform grid; masks follow by nearest slice
    vol = read_ct(task.folder, ReadOptions(series_uid=task.series_uid, nonuniform="resample"))
    geom = vol.geometry
    index, nearest_slot = _slice_index(vol)
    nodules, anns, problems = build_nodules(read, index, geom, task.consensus)
    for a in anns:
        a.voxels = carry_along_slices(a.voxels, geom.size, nearest_slot)
    for n in nodules:
        n.consensus = carry_along_slices(n.consensus, geom.size, nearest_slot)
    label = np.zeros(geom.size, np.uint8)
    rows: list[dict] = []
    irrelevant = _point_findings(read, index, geom)
    for n in nodules:
        if len(n.consensus) == 0:
            problems.append(f"nodule of readers {n.readers}: empty consensus at {task.consensus:g}, dropped")
            continue
        m = _measure(n.consensus, geom)
        if len(n.readers) < task.min_readers:
            irrelevant.append(_finding(task.case_id, f"marked by {len(n.readers)} reader(s), fewer than "
                                       f"{task.min_readers}", m, len(n.readers)))
            continue
        if m["diameter_mm"] < task.min_diameter_mm:
            irrelevant.append(_finding(task.case_id, f"diameter below {task.min_diameter_mm:g} mm", m, len(n.readers)))
            continue
        label.reshape(-1)[n.consensus] = 1
        rows.append({"case_id": task.case_id, "patient_id": task.patient_id, "series_instance_uid": task.series_uid,
                     "nodule": len(rows) + 1, "n_readers": len(n.readers), "readers": ";".join(map(str, n.readers)),
                     **m, **{f"{k}_median": v for k, v in median_characteristics(n.annotations).items()}})
    hu = sitk.Cast(vol.image, sitk.sitkInt16) if vol.image.GetPixelID() != sitk.sitkInt16 else vol.image
    if vol.synthetic:  # a study of ``synth --lidc-xml``: the NIfTI keeps the mark (descrip), as phantoms do
        hu.SetMetaData("ITK_FileNotes", f"{SYNTHETIC_MARK} LIDC-shaped study {task.case_id}")
    write_image(hu, out / "images" / f"{task.case_id}.nii.gz")
    write_mask(label, geom, out / "labels" / f"{task.case_id}.nii.gz")
    if task.per_reader:
        # one mask per reading session, and the number of readers marking each voxel (``label_mode`` soft/any-reader)
        agreement = np.zeros(geom.size, np.uint8)
        for s in read.sessions:
            r = np.zeros(geom.size, np.uint8)
            for a in anns:
                if a.reader == s.index:
                    r.reshape(-1)[a.voxels] = 1
            agreement += r
            write_image(xyz_array_to_sitk(r, geom), out / "readers" / f"{task.case_id}_r{s.index}.nii.gz")
        write_mask(agreement, geom, out / "labels_readers" / f"{task.case_id}.nii.gz")
    counts = read.counts()
    record = {"case_id": task.case_id, "patient_id": task.patient_id, "series_instance_uid": task.series_uid,
              "xml": task.xml, "geometry": geom.to_dict(), "nodules": rows, "problems": problems,
              "read_counts": counts, "per_reader": task.per_reader, "n_readers": len(read.sessions),
              "synthetic": vol.synthetic,
              "irrelevant_findings": [{**f, "case_id": task.case_id} for f in irrelevant]}
    if nearest_slot is not None:
        steps = np.diff(vol.source_slice_index) * geom.spacing[2]  # mm between the original slices
        record["resampled"] = {"reason": vol.notes[0] if vol.notes else "non-uniform slice spacing",
                               "source_slices": len(vol.source_slices), "slices": int(geom.size[2]),
                               "spacing_mm": round(float(geom.spacing[2]), 4),
                               "largest_step_mm": round(float(steps.max()), 3),
                               "interpolated_slices": int(np.sum(nearest_slot != np.arange(geom.size[2]))),
                               "image": "linear along the slice normal", "masks": "nearest slice"}
    atomic_write_text(out / "cases" / f"{task.case_id}.json", json.dumps(record, indent=1))
    return record


def _is_done(out: Path, case_id: str, per_reader: bool) -> dict | None:
    rec_path = out / "cases" / f"{case_id}.json"
    if not rec_path.is_file():
        return None
    try:
        rec = json.loads(rec_path.read_text())
        geom = Geometry.from_dict(rec["geometry"])
        for f in (out / "images" / f"{case_id}.nii.gz", out / "labels" / f"{case_id}.nii.gz"):
            if not header_geometry(str(f)).matches(geom):
                return None
        if per_reader and not (rec.get("per_reader") and (out / "labels_readers" / f"{case_id}.nii.gz").is_file()):
            return None
        return rec
    except Exception:  # noqa: BLE001 - anything unreadable means "convert again"
        return None


def convert_lidc(root: str | Path, out: str | Path, xml_dir: str | Path | None = None, consensus: float = 0.5,
                 min_diameter_mm: float = 3.0, min_readers: int = 1, per_reader: bool = False, workers: int = 1,
                 n_folds: int = 5, progress: bool = True) -> dict:
    """Convert every CT series under ``root`` that has an XML read; returns the summary."""

    if not 0 < consensus <= 1:
        raise InputError(None, f"consensus must be > 0 and <= 1, got {consensus}")
    out = Path(out)
    series, notes = discover(root, xml_dir)
    if not series:
        raise InputError(root, "holds no CT series with a matching LIDC XML read")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "convert.log"
    with open(log, "a") as fh:
        for n in notes:
            fh.write(f"note: {n}\n")
    cases = assign_case_ids(series)
    records: dict[str, dict] = {}
    failed: dict[str, str] = {}
    tasks = []
    skipped = 0
    for c in cases:
        rec = _is_done(out, c["case_id"], per_reader)
        if rec is not None:
            records[c["case_id"]] = rec
            skipped += 1
        else:
            tasks.append(CaseTask(c["case_id"], c["patient_id"], c["series_uid"], c["folder"], c["xml"], str(out),
                                  consensus, min_diameter_mm, min_readers, per_reader))
    bar = tqdm(total=len(tasks), desc="lidc", unit="case", disable=not progress)

    def _done(task: CaseTask, result: dict | None, err: BaseException | None) -> None:
        if err is not None:
            failed[task.case_id] = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        else:
            records[task.case_id] = result
        bar.update(1)

    sequential = tasks
    if workers > 1 and len(tasks) > 1:
        sequential = []
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding BLAS/torch threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futs = {pool.submit(convert_case, t): t for t in tasks}
            for f in as_completed(futs):
                err = f.exception()
                if isinstance(err, BrokenProcessPool):
                    sequential.append(futs[f])  # a crashed worker takes its neighbours down: retry those alone
                else:
                    _done(futs[f], f.result() if err is None else None, err)
    for t in sequential:
        try:
            _done(t, convert_case(t), None)
        except Exception as err:  # noqa: BLE001 - one bad case never stops the others
            _done(t, None, err)
    bar.close()
    with open(log, "a") as fh:
        for cid, reason in sorted(failed.items()):
            fh.write(f"failed: {cid}: {reason}\n")
        for cid, rec in sorted(records.items()):
            for p in rec.get("problems", []):
                fh.write(f"problem: {cid}: {p}\n")
    # tables and manifest from every record (converted now or earlier)
    rows = [r for cid in sorted(records) for r in records[cid]["nodules"]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=NODULE_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "nodules.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=IRRELEVANT_FIELDS)
    w.writeheader()
    w.writerows(f for cid in sorted(records) for f in records[cid].get("irrelevant_findings", []))
    atomic_write_text(out / "irrelevant_findings.csv", buf.getvalue())
    manifest = out / "manifest.json"
    folds = assign_folds([r["patient_id"] for r in records.values()], n_folds)
    entries = [{"image": relpath(out / "images" / f"{cid}.nii.gz", manifest),
                "label": relpath(out / "labels" / f"{cid}.nii.gz", manifest), "case_id": cid,
                "patient_id": rec["patient_id"], "series_instance_uid": rec["series_instance_uid"],
                "fold": folds[rec["patient_id"]], "source": "lidc-synthetic" if rec.get("synthetic") else "lidc",
                "n_readers": rec.get("n_readers"),
                **({"label_readers": relpath(out / "labels_readers" / f"{cid}.nii.gz", manifest)}
                   if rec.get("per_reader") else {}),
                **({"resampled": True} if rec.get("resampled") else {})} for cid, rec in sorted(records.items())]
    write_manifest(manifest, {"training": entries}, extra={"description": "LIDC-IDRI consensus nodule masks",
                                                           "labels": {"0": "background", "1": "nodule"},
                                                           "consensus": consensus, "min_readers": min_readers,
                                                           "min_diameter_mm": min_diameter_mm})
    summary = {"series_found": len(series), "converted": len(records) - skipped, "skipped": skipped,
               "failed": len(failed), "nodules": len(rows), "failures": failed,
               "rois_unmatched": sum(len(r.get("problems", [])) for r in records.values()), "notes": len(notes)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary
