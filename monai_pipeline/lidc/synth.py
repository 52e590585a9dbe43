"""``monai-pipeline synth --lidc-xml``: LIDC-shaped DICOM studies from the real LIDC-IDRI XML reads.

For each CT read (``LidcReadMessage``) a study is written as a TCIA download lays it out
(``LIDC-IDRI/<patient>/<study>/<series>/1-NNN.dcm`` with the XML beside the slices), so that
``lidc-convert`` runs on it exactly as on the real archive. What comes from the real data and what is made up:

* from the XML: SeriesInstanceUID, StudyInstanceUID, the slice positions (``imageZposition``) and SOP Instance
  UIDs of every slice that carries an roi or a non-nodule mark, and every reader's contours;
* from ``LIDC-IDRI_MetaData.csv`` (when given): the patient id (the XML does not carry it; without the table
  the patient is named after the series UID), so two series of one patient land in one patient folder;
* inferred: the slice step (the most common gap between the annotated positions; 2.5 mm when a read has
  marks on one position only) and a grid of slices at that step covering the annotated positions plus a
  margin. Slices between annotated ones get new, deterministic SOP UIDs. A read whose positions do not lie on
  one grid (an roi 3.5 mm off every slice, as in LIDC-IDRI-0566) keeps the off-grid SOP UID out of the series,
  as happens with the real images;
* made up: pixel spacing (neither the XML nor the metadata table records it: one of the usual LIDC fields of
  view, 310-400 mm over 512 columns, chosen by the series UID), the anatomy (the project's analytic chest
  phantom, :func:`~monai_pipeline.data.synthetic.chest_anatomy`), scanner noise, and the nodules' densities.

The nodules are drawn from the readers' contours, rasterised with the LIDC convention
(:mod:`monai_pipeline.lidc.raster`) and grouped into nodules as ``lidc-convert`` groups them: each voxel's
density rises with the fraction of the nodule's readers whose outline encloses it (all readers: fully solid,
half of them: half way from lung to nodule), so every reader's outline lies on the edge of the nodule the pixels
show. Density follows the readers' median texture (1-2 ground glass, 3 part-solid, 4-5 or none solid) and a
calcification score other than 6 ("absent") adds a calcified core. Marks of nodules under 3 mm (one point)
become 2.5 mm solid dots, non-nodule marks faint 4 mm opacities: present in the pixels, absent from the labels,
as in the real data. The phantom is shifted in-plane (up to 30 mm) so that its lungs hold the nodules where
the readers drew them in a real chest; a nodule that still lies less than 95 % inside them gets a round pocket of
lung around it (each nodule's ``in_lung_fraction`` and ``pocket``, and the shift, are in the study
record). The slices are marked synthetic (DICOM Manufacturer).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage
from tqdm import tqdm

from monai_pipeline.data.synthetic import COVERED_FRACTION, add_scanner_noise, chest_anatomy
from monai_pipeline.errors import InputError
from monai_pipeline.io.dicom_writer import write_ct_series
from monai_pipeline.io.geometry import Geometry, xyz_array_to_sitk
from monai_pipeline.io.writer import atomic_write_text
from monai_pipeline.lidc.nodules import SliceIndex, build_nodules, median_characteristics
from monai_pipeline.lidc.xml import LidcRead, parse_read

logger = logging.getLogger(__name__)

#: slice step (mm) of a read whose marks lie on a single position
DEFAULT_STEP_MM = 2.5
#: the thickest LIDC-IDRI series (mm), and the usual steps, largest first
MAX_STEP_MM = 5.0
USUAL_STEPS_MM = (5.0, 3.0, 2.5, 2.0, 1.8, 1.25, 1.0, 0.625, 0.5)
#: fields of view (mm over 512 columns) found in LIDC-IDRI; the pixel spacing is one of them / 512
FIELDS_OF_VIEW_MM = (310.0, 330.0, 350.0, 360.0, 380.0, 400.0)
MATRIX = 512
LUNG_HU = -850.0
SOLID_HU, GGO_HU, CALCIFIED_HU, NON_NODULE_HU = 35.0, -600.0, 450.0, -450.0
NOISE_HU = 20.0
#: lung put around a nodule that the shifted phantom's lungs still do not hold (mm beyond the nodule, in-plane)
POCKET_MM = 6.0


@dataclass
class StudyLayout:
    """Where the slices of one synthetic series lie: positions (mm, ascending z, LPS) and SOP UIDs."""

    series_uid: str
    study_uid: str
    patient_id: str
    pixel_spacing_mm: float
    step_mm: float
    z_mm: list[float]
    sop_uids: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def geometry(self) -> Geometry:
        """Axial, head first supine (identity LPS direction), 512 x 512 centred on the table axis."""
        half = (MATRIX - 1) / 2.0 * self.pixel_spacing_mm
        return Geometry((MATRIX, MATRIX, len(self.z_mm)), (self.pixel_spacing_mm, self.pixel_spacing_mm, self.step_mm),
                        (-half, -half, float(self.z_mm[0])), tuple(np.eye(3).reshape(-1)))


def load_metadata(path: str | Path | None) -> dict[str, dict]:
    """``LIDC-IDRI_MetaData.csv`` -> {series UID: row} (CT rows only); empty without a path."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "LIDC metadata table not found")
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "Series UID" not in rows[0]:
        raise InputError(p, "is not LIDC-IDRI_MetaData.csv (no 'Series UID' column)")
    return {r["Series UID"].strip(): r for r in rows if r.get("Modality", "CT").strip() == "CT"}


def _uid(*parts: str) -> str:
    """A deterministic DICOM UID (pydicom's hashing of ``parts``)."""

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _marks(read: LidcRead) -> list[tuple[float, str]]:
    """(z mm, SOP UID) of every roi and non-nodule mark of the read."""
    out = [(r.z, r.sop_uid) for n in read.nodule_reads for r in n.rois]
    out += [(nn.z, nn.sop_uid) for s in read.sessions for nn in s.non_nodules]
    return out


def infer_step(z: np.ndarray) -> float:
    """The slice step (mm) of a series from the positions its marks lie on.

    The smallest gap between distinct positions (gaps under 0.3 mm ignored) of which at least 95 % of the gaps
    are whole multiples (to 0.02 mm); if none, the most common gap. A step above 5 mm (the thickest LIDC
    series) means only far-apart slices were marked: the largest usual LIDC step that divides it is taken.
    :data:`DEFAULT_STEP_MM` when there is no gap at all.
    """
    u = np.unique(np.round(np.asarray(z, dtype=np.float64), 3))
    gaps = np.diff(u)
    gaps = gaps[gaps >= 0.3]
    if len(gaps) == 0:
        return DEFAULT_STEP_MM
    step = None
    for c in np.unique(np.round(gaps, 3)):
        ratio = gaps / c
        if np.mean(np.abs(ratio - np.rint(ratio)) * c <= 0.02) >= 0.95:
            step = float(c)
            break
    if step is None:
        counts = Counter(np.round(gaps, 3).tolist())
        step = float(max(counts, key=lambda g: (counts[g], -g)))
    if step > MAX_STEP_MM:
        step = next((d for d in USUAL_STEPS_MM if abs(step / d - round(step / d)) * d <= 0.02), DEFAULT_STEP_MM)
    return step


def plan_layout(read: LidcRead, metadata: dict[str, dict], margin_mm: float = 15.0) -> StudyLayout:
    """The slice grid of one read: positions on the inferred step covering every mark plus ``margin_mm``."""
    marks = _marks(read)
    if not read.series_uid:
        raise InputError(read.source, "has no SeriesInstanceUid in its header")
    if not marks:
        raise InputError(read.source, "has no roi or non-nodule mark, so no slice position to build a series on")
    row = metadata.get(read.series_uid, {})
    patient = (row.get("Patient Id") or "").strip() or f"LIDC-SYNTH-{read.series_uid[-8:]}"
    h = int(hashlib.sha256(read.series_uid.encode()).hexdigest(), 16)
    px = FIELDS_OF_VIEW_MM[h % len(FIELDS_OF_VIEW_MM)] / MATRIX
    zs = np.array([z for z, _ in marks])
    step = infer_step(zs)
    n_margin = int(np.ceil(margin_mm / step))
    z0 = float(zs.min()) - n_margin * step
    n = int(np.rint((float(zs.max()) - z0) / step)) + n_margin + 1
    grid = z0 + np.arange(n) * step
    sops: list[str | None] = [None] * n
    notes: list[str] = []
    seen: set[str] = set()
    for z, sop in sorted(marks):
        if sop in seen:
            continue
        seen.add(sop)
        k = int(np.rint((z - z0) / step))
        if abs(grid[k] - z) > 0.01:
            notes.append(f"SOP {sop} at z={z:g} mm lies {abs(grid[k] - z):.2f} mm off the {step:g} mm grid: "
                         "not in the series")
        elif sops[k] is not None and sops[k] != sop:
            notes.append(f"SOP {sop} at z={z:g} mm: slice already taken by another SOP UID, not in the series")
        else:
            sops[k] = sop
    uids = [s if s is not None else _uid(read.series_uid, "slice", k) for k, s in enumerate(sops)]
    return StudyLayout(read.series_uid, read.study_uid or _uid(read.series_uid, "study"), patient, px, step,
                       [round(float(v), 4) for v in grid], uids, notes)


def _appearance(group: list) -> tuple[str, float, bool]:
    """(kind, HU, calcified) of a nodule from its readers' median characteristics: texture 1-2 ground glass, 3
    part-solid, 4-5 or none solid; calcified when the median calcification score is not 6 ("absent")."""
    med = median_characteristics(group)
    texture = 5.0 if np.isnan(med["texture"]) else med["texture"]
    calcified = bool(med["calcification"] < 6)  # NaN (no characteristics) compares False
    if texture <= 2:
        return "ground-glass", GGO_HU, calcified
    if texture < 4:
        return "part-solid", GGO_HU, calcified
    return "solid", SOLID_HU, calcified


def _ball(shape: tuple[int, int, int], spacing, centre_vox, radius_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    c = np.asarray(centre_vox, dtype=np.float64)
    r = np.ceil(radius_mm / np.asarray(spacing)).astype(int) + 1
    lo = np.maximum(np.floor(c).astype(int) - r, 0)
    hi = np.minimum(np.floor(c).astype(int) + r + 1, np.asarray(shape))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    grids = np.meshgrid(*[(np.arange(a, b) - cc) * s for a, b, cc, s in zip(lo, hi, c, spacing, strict=True)],
                        indexing="ij")
    return sl, np.sqrt(sum(g ** 2 for g in grids)) <= radius_mm


def render_study(read: LidcRead, layout: StudyLayout, seed: int) -> tuple[np.ndarray, dict]:
    """HU volume (x, y, k) of the study and what was drawn (nodules, their kinds, lung pockets)."""

    geom = layout.geometry
    shape, spacing = geom.size, geom.spacing
    rng = np.random.default_rng(seed)
    index = SliceIndex({s: k for k, s in enumerate(layout.sop_uids)}, np.asarray(layout.z_mm))
    nodules, _, problems = build_nodules(read, index, geom, consensus=0.5)
    # the phantom's centre: the middle of the annotated positions (so they fall in mid-lung), table axis in x/y;
    # shifted in-plane so that the lungs hold the nodules where the readers drew them
    marks = np.array([z for z, _ in _marks(read)])
    mid = 0.5 * (float(marks.min()) + float(marks.max()))
    height = max(280.0, 1.4 * float(np.ptp(marks)) + 60.0)
    vol_centre = float(layout.z_mm[0]) + (shape[2] - 1) / 2.0 * spacing[2]
    voxels = [np.concatenate([np.stack(np.unravel_index(a.voxels, shape), axis=1) for a in nod.annotations])
              for nod in nodules]
    centre = (np.asarray(shape) - 1) / 2.0
    cover = [(v - centre) * np.asarray(spacing) for v in voxels]
    img, lung, shift = chest_anatomy(shape, spacing, rng, offset_mm=(0.0, 0.0, vol_centre - mid), height_mm=height,
                                     cover_mm=cover)
    drawn, pockets = [], 0
    margin = int(np.ceil(POCKET_MM / min(spacing[:2]))) + 2
    for nod, allv in zip(nodules, voxels, strict=True):
        lo = np.maximum(allv.min(axis=0) - [margin, margin, 0], 0)
        hi = np.minimum(allv.max(axis=0) + [margin + 1, margin + 1, 1], shape)
        pad = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        count = np.zeros(tuple(hi - lo), np.float32)
        for a in nod.annotations:
            v = np.stack(np.unravel_index(a.voxels, shape), axis=1)
            count[tuple((v - lo).T)] += 1.0
        frac = count / len(nod.annotations)
        f = ndimage.gaussian_filter(frac, sigma=(0.6, 0.6, 0.0))  # in-plane partial volume, none across slices
        core = frac > 0
        in_lung = float(lung[pad][core].mean())
        pocket = in_lung < COVERED_FRACTION
        if pocket:  # still outside the shifted phantom's lungs: a round pocket of lung around it, slice by slice
            pockets += 1
            dist = ndimage.distance_transform_edt(~core, sampling=(spacing[0], spacing[1], 1e6))
            sub = img[pad]
            grow = dist <= POCKET_MM
            sub[grow] = np.minimum(sub[grow], LUNG_HU)
        kind, hu, calcified = _appearance(nod.annotations)
        sub = img[pad]
        target = np.full(sub.shape, hu, np.float32)
        if kind == "part-solid":  # a solid core where every reader agrees, away from the edge
            solid = ndimage.binary_erosion(frac >= 1.0, structure=np.ones((3, 3, 1), bool), iterations=2)
            target[solid] = SOLID_HU
        if calcified:
            target[ndimage.binary_erosion(frac >= 1.0, structure=np.ones((3, 3, 1), bool), iterations=3)] = CALCIFIED_HU
        img[pad] = sub * (1 - f) + target * f
        drawn.append({"readers": nod.readers, "kind": kind, "calcified": calcified,
                      "voxels_any_reader": int(core.sum()), "in_lung_fraction": round(in_lung, 3), "pocket": pocket})
    small = 0
    for nr in read.nodule_reads:  # marks of nodules < 3 mm: small solid dots
        if nr.is_small:
            for roi in nr.rois:
                k = index.place(roi.sop_uid, roi.z)
                if k is not None and len(roi.points):
                    sl, ball = _ball(shape, spacing, (roi.points[0][0], roi.points[0][1], k), 1.25)
                    img[sl][ball] = np.maximum(img[sl][ball], SOLID_HU)
                    small += 1
    faint = 0
    for sess in read.sessions:  # non-nodule marks: faint opacities
        for nn in sess.non_nodules:
            k = index.place(nn.sop_uid, nn.z)
            if k is not None and 0 <= nn.x < shape[0] and 0 <= nn.y < shape[1]:
                sl, ball = _ball(shape, spacing, (nn.x, nn.y, k), 2.0)
                img[sl][ball] = np.maximum(img[sl][ball], NON_NODULE_HU)
                faint += 1
    add_scanner_noise(img, rng, NOISE_HU)
    return img, {"nodules": drawn, "phantom_shift_mm": list(shift), "lung_pockets": pockets,
                 "small_nodule_dots": small, "non_nodule_marks": faint,
                 "problems": problems}


def _study_folders(layout: StudyLayout, number: int) -> tuple[str, str]:
    """TCIA-style study and series folder names (date, description, UID tail)."""
    return (f"01-01-2000-NA-NA-{int(layout.study_uid.split('.')[-1]) % 100000:05d}",
            f"{3000000 + number}.000000-NA-{int(layout.series_uid.split('.')[-1]) % 100000:05d}")


def xml_files(paths: list[str | Path]) -> list[Path]:
    """XML files named by ``paths`` (files, or folders searched recursively), sorted, without duplicates."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.rglob("*.xml"))
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(p, "no such XML file or folder")
    return sorted(set(out))


def synthesize_lidc(xml: list[str | Path], out: str | Path, metadata: str | Path | None = None, seed: int = 0,
                    margin_mm: float = 15.0, max_slices: int | None = None, progress: bool = True) -> dict:
    """Write one LIDC-shaped study per CT read under ``out/LIDC-IDRI`` (see the module docstring); returns the
    summary, also written to ``out/synth_lidc.json``. Every read is parsed and laid out before anything is
    written; a study already complete (its ``.done`` record) is kept. Reads of one series are written once."""

    files = xml_files(list(xml))
    meta = load_metadata(metadata)
    plans: list[tuple[Path, LidcRead, StudyLayout]] = []
    skipped: list[str] = []
    seen: dict[str, Path] = {}
    for f in files:
        read = parse_read(f)
        if read is None:
            skipped.append(f"{f}: chest-radiograph read (IdriReadMessage), not CT")
            continue
        if read.series_uid in seen:
            skipped.append(f"{f}: another copy of the read of series {read.series_uid} ({seen[read.series_uid].name})")
            continue
        layout = plan_layout(read, meta, margin_mm)
        if max_slices is not None and len(layout.z_mm) > max_slices:
            skipped.append(f"{f}: needs {len(layout.z_mm)} slices, more than --max-slices {max_slices}")
            continue
        seen[read.series_uid] = f
        plans.append((f, read, layout))
    if not plans:
        raise InputError(xml[0] if xml else out, "holds no CT read to synthesise a study from")
    out = Path(out)
    root = out / "LIDC-IDRI"
    root.mkdir(parents=True, exist_ok=True)
    studies = []
    for number, (f, read, layout) in enumerate(tqdm(plans, desc="synth --lidc-xml", unit="study",
                                                    disable=not progress), start=1):
        study_dir, series_dir = _study_folders(layout, number)
        final = root / layout.patient_id / study_dir / series_dir
        record_path = final / ".done.json"
        if record_path.is_file():
            studies.append(json.loads(record_path.read_text()))
            continue
        hu, drawn = render_study(read, layout, seed * 1_000_003 + number)
        tmp = out / ".partial" / layout.series_uid  # outside LIDC-IDRI/: a crash leaves nothing lidc-convert finds
        if tmp.exists():
            shutil.rmtree(tmp)
        write_ct_series(xyz_array_to_sitk(np.rint(hu).astype(np.int16), layout.geometry), tmp,
                        patient_id=layout.patient_id, series_uid=layout.series_uid, study_uid=layout.study_uid,
                        sop_uids=layout.sop_uids, instance_order="ascending",
                        file_names=[f"1-{k + 1:03d}.dcm" for k in range(len(layout.z_mm))],
                        rng=np.random.default_rng(number))
        shutil.copyfile(f, tmp / f.name)  # the read beside its slices, as in the TCIA download
        record = {"xml": str(f), "folder": str(final.relative_to(out)), "slices": len(layout.z_mm),
                  **{k: v for k, v in asdict(layout).items() if k not in ("z_mm", "sop_uids")}, **drawn}
        atomic_write_text(tmp / ".done.json", json.dumps(record, indent=1))
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(final)
        studies.append(record)
    summary = {"studies": len(studies), "patients": len({s["patient_id"] for s in studies}),
               "nodules": sum(len(s["nodules"]) for s in studies), "skipped": skipped, "root": str(root),
               "metadata": str(metadata) if metadata else None, "records": studies}
    atomic_write_text(out / "synth_lidc.json", json.dumps(summary, indent=1))
    return summary
