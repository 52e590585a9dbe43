"""``monai-pipeline evaluate``: score predictions against a manifest, never on cases the model trained on.

:func:`evaluate_folder` selects the manifest cases (``sections``, and with ``fold`` the training cases of that
fold), reads which model made each prediction (the done-marker's provenance) and refuses cases that model was
trained on unless ``include_training``. It then writes into ``out``:

* ``metrics.csv`` -- per case: Dice, IoU, HD95, ASSD, lesion counts ... (:mod:`.metrics`);
* ``reference_lesions.csv`` -- per reference nodule: size, detected, lesion Dice, size bucket;
* ``froc.csv``, ``froc.png``, ``candidates.csv`` (LUNA16 format) -- detection (:mod:`.detection`);
* ``readers.csv`` -- per nodule, when reader masks exist (:mod:`.readers`);
* ``summary.json`` (strict JSON: ``null`` where undefined), ``dice.png``.

The reference standard is each label's nodules of at least :data:`MIN_NODULE_MM` (:func:`split_reference`):
smaller components leave the reference for every figure, and candidates on them are ignored (LUNA16).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monai_pipeline.arrays import label_components
from monai_pipeline.data.manifest import load_manifest
from monai_pipeline.errors import InputError, PipelineError
from monai_pipeline.evaluation.detection import (
    POINT_FINDING_RADIUS_MM,
    Finding,
    ScanDetections,
    candidates_csv,
    detection_summary,
    froc_csv,
    froc_curve,
    match_scan,
    plot_froc,
)
from monai_pipeline.evaluation.metrics import METRICS, case_metrics
from monai_pipeline.evaluation.readers import dice, nodule_agreement, reader_files
from monai_pipeline.evaluation.stats import summarize
from monai_pipeline.io.geometry import sitk_to_xyz_array
from monai_pipeline.io.layout import PredictionLayout
from monai_pipeline.io.reader import ReadOptions, label_values, read_ct, read_label
from monai_pipeline.io.writer import atomic_path, atomic_write_text, dumps_strict
from monai_pipeline.postprocess import lesion_table
from monai_pipeline.visualize import save_dice_boxplot, save_overlays_png

logger = logging.getLogger(__name__)

#: nodule size buckets by longest axial diameter (mm): lower bound inclusive, upper exclusive
SIZE_BUCKETS = ((0.0, 6.0, "<6"), (6.0, 10.0, "6-10"), (10.0, 20.0, "10-20"), (20.0, float("inf"), ">=20"))
DEFAULT_SECTIONS = ("validation", "test")
IRRELEVANT_FILE = "irrelevant_findings.csv"
#: the reference standard's smallest nodule (longest axial diameter, mm): LIDC's readers outline nodules of 3 mm
#: and more, and LUNA16 counts a smaller reference finding as irrelevant. A reference component below it (a
#: consensus mask's stray voxel, a label's fragment cut off its nodule) is no nodule: it leaves the reference,
#: and a candidate on it counts neither as a hit nor as a false positive.
MIN_NODULE_MM = 3.0


def read_binary_label(path: str | Path):
    """A mask or reference label whose values must be 0 (background) and 1 (nodule): anything else (a
    multi-class map, 255 for foreground, a float probability map) is refused, never thresholded silently."""

    vol = read_label(path)
    values = label_values(vol.image)
    if any(v not in (0, 1) for v in values):
        raise InputError(path, f"label values must be 0 (background) and 1 (nodule), found {values[:8]}",
                         hint="evaluation is binary; convert the map first")
    return vol


def size_bucket(diameter_mm: float) -> str:
    return next(name for lo, hi, name in SIZE_BUCKETS if lo <= diameter_mm < hi)


def select_cases(manifest: str | Path, sections: Sequence[str] | None, fold: int | Sequence[int] | None,
                 base_dir: str | Path | None = None) -> list[dict]:
    """Labelled entries of ``sections`` (default: validation and test; none when ``fold`` is given), plus the
    training entries of ``fold`` (one fold or several: the out-of-fold cases of a cross-validation)."""

    chosen = list(sections) if sections is not None else ([] if fold is not None else list(DEFAULT_SECTIONS))
    entries = [e for s in chosen for e in load_manifest(manifest, s, base_dir) if e.get("label")]
    if fold is not None:
        wanted = [fold] if isinstance(fold, int) else list(fold)
        training = load_manifest(manifest, "training", base_dir)
        folds = sorted({int(e.get("fold", 0)) for e in training})
        bad = [f for f in wanted if f not in folds]
        if bad:
            raise InputError(manifest, f"fold must be one of {folds}, got {bad[0]}")
        seen = {x["case_id"] for x in entries}
        entries += [e for e in training if int(e.get("fold", 0)) in wanted and e.get("label")
                    and e["case_id"] not in seen]
    return entries


def check_held_out(pred_dir: Path, case_ids: list[str], include_training: bool) -> dict:
    """Refuse (InputError) predictions of cases their model was trained on, unless ``include_training``.
    Returns what the report records: the models, settings and the cases whose provenance is unknown."""
    trained, unverified, models, settings = [], [], set(), set()
    details: dict[str, dict] = {}
    layout = PredictionLayout(pred_dir)
    for cid in case_ids:
        prov = layout.provenance(cid)
        if prov is None:
            unverified.append(cid)
            continue
        models.add(prov.get("model_sha256", ""))
        settings.add(prov.get("settings_sha256", ""))
        details.setdefault(prov.get("settings_sha256", ""), prov.get("settings", {}))
        if cid in set(prov.get("trained_on", [])):
            trained.append(cid)
    if trained and not include_training:
        shown = ", ".join(trained[:8]) + (f" and {len(trained) - 8} more" if len(trained) > 8 else "")
        raise InputError(pred_dir, f"{len(trained)} case(s) were predicted by a model trained on them: {shown}",
                         hint="evaluate held-out cases (--sections, --fold), or pass --include-training")
    if unverified:
        logger.warning("%d prediction(s) record no model (no provenance): cannot check they were not trained on: %s",
                       len(unverified), ", ".join(unverified[:8]))
    return {"model_sha256": sorted(models), "settings_sha256": sorted(settings), "settings": details,
            "unverified": unverified, "training_cases_included": trained}


def load_candidates(pred_dir: Path, case_id: str) -> list[tuple[tuple[float, float, float], float]]:
    """Candidates of a case, (centre mm LPS, score); a blank score counts 1.0. From ``<case_id>_candidates.csv``,
    every candidate with the ones the operating point dropped (what LUNA16's FROC ranks), or, for predictions
    written without it (before it existed, or by another tool), from ``<case_id>_lesions.csv``: the kept ones."""
    layout = PredictionLayout(pred_dir)
    path = layout.candidates(case_id)
    if not path.is_file():
        path = layout.lesions(case_id)
    if not path.is_file():
        return []
    with open(path) as fh:
        return [((float(r["centroid_x_mm"]), float(r["centroid_y_mm"]), float(r["centroid_z_mm"])),
                 float(r["score"]) if r.get("score") not in (None, "") else 1.0) for r in csv.DictReader(fh)]


def load_irrelevant(folder: Path) -> dict[str, list[Finding]]:
    """Irrelevant findings per case from ``irrelevant_findings.csv`` (written by ``lidc-convert``)."""
    path = folder / IRRELEVANT_FILE
    if not path.is_file():
        return {}
    out: dict[str, list[Finding]] = {}
    with open(path) as fh:
        for r in csv.DictReader(fh):
            d = float(r["diameter_mm"]) if r.get("diameter_mm") not in (None, "") else 0.0
            radius = d / 2 if d > 0 else POINT_FINDING_RADIUS_MM
            out.setdefault(r["case_id"], []).append(Finding(
                (float(r["centroid_x_mm"]), float(r["centroid_y_mm"]), float(r["centroid_z_mm"])), radius, r["reason"]))
    return out


def split_reference(ref: np.ndarray, geometry, min_nodule_mm: float = MIN_NODULE_MM
                    ) -> tuple[np.ndarray, np.ndarray, list[Finding]]:
    """The reference standard of a label (x, y, z): its components (26-connected) whose longest axial diameter
    is at least ``min_nodule_mm`` as a bool mask; the smaller ones as a bool mask and as irrelevant findings
    (centre mm, LPS; radius half their diameter, at least :data:`POINT_FINDING_RADIUS_MM`). ``min_nodule_mm`` 0
    keeps every component."""
    ref_b = np.asarray(ref) > 0
    none = np.zeros_like(ref_b)
    if min_nodule_mm <= 0 or not ref_b.any():
        return ref_b, none, []
    rows, labels = lesion_table(ref_b, geometry, return_labels=True)
    small = [r for r in rows if float(r["longest_axial_diameter_mm"]) < min_nodule_mm]
    if not small:
        return ref_b, none, []
    below = np.isin(labels, [r["lesion"] for r in small])
    return ref_b & ~below, below, [Finding((r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"]),
                                           max(float(r["longest_axial_diameter_mm"]) / 2, POINT_FINDING_RADIUS_MM),
                                           f"reference component below {min_nodule_mm:g} mm") for r in small]


def without_ignored(pred: np.ndarray, standard: np.ndarray, below: np.ndarray) -> np.ndarray:
    """``pred`` (x, y, z) without its components (26-connected) that touch a reference component below the
    standard (``below``) and no nodule of it (``standard``): on the masks, what detection scoring does with a
    candidate on an irrelevant finding."""
    pred_b = np.asarray(pred) > 0
    if not below.any():
        return pred_b
    labels, _ = label_components(pred_b, 26)
    drop = np.setdiff1d(np.unique(labels[below]), np.unique(labels[standard]))
    return pred_b & ~np.isin(labels, drop[drop > 0])


def reference_lesions(pred: np.ndarray, ref: np.ndarray, geometry) -> tuple[list[dict], list[Finding]]:
    """Per reference nodule: longest axial and equivalent diameter (mm), detected (any predicted voxel on it),
    lesion Dice (against the predicted components that touch it), size bucket; and the nodules as findings
    (centre, radius = longest axial diameter / 2) for the detection score."""

    rows, labels = lesion_table(ref, geometry, return_labels=True)
    pred_b = np.asarray(pred) > 0
    lp, _ = label_components(pred_b, 26)
    out, findings = [], []
    for row in rows:
        nodule = labels == row["lesion"]
        ids = np.unique(lp[nodule])
        ids = ids[ids > 0]
        model = np.isin(lp, ids) if len(ids) else np.zeros_like(nodule)
        d = float(row["longest_axial_diameter_mm"])
        out.append({"lesion": row["lesion"], "diameter_mm": d, "equivalent_diameter_mm": row["equivalent_diameter_mm"],
                    "volume_mm3": row["volume_mm3"], "detected": bool(len(ids)), "lesion_dice": dice(model, nodule),
                    "size_bucket": size_bucket(d)})
        findings.append(Finding((row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]), d / 2))
    return out, findings


def _csv(rows: list[dict], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def by_size(lesions: list[dict]) -> dict:
    """Per size bucket: number of reference nodules, detection sensitivity, lesion Dice summary."""
    out = {}
    for _, _, name in SIZE_BUCKETS:
        rows = [r for r in lesions if r["size_bucket"] == name]
        out[name] = {"n_nodules": len(rows),
                     "sensitivity": (sum(r["detected"] for r in rows) / len(rows)) if rows else None,
                     "lesion_dice": summarize([r["lesion_dice"] for r in rows])}
    return out


def evaluate_folder(pred_dir: str | Path, manifest: str | Path, out: str | Path | None = None,
                    sections: Sequence[str] | None = None, min_overlap: float = 0.0, plot: bool = True,
                    base_dir: str | Path | None = None, fold: int | Sequence[int] | None = None,
                    include_training: bool = False, allow_missing: bool = True,
                    min_nodule_mm: float = MIN_NODULE_MM) -> dict:
    """Evaluate the selected manifest cases that have ``PRED_DIR/<case_id>.nii.gz`` (see the module docstring);
    returns the summary with the per-case ``rows``. ``include_training`` without ``sections`` or ``fold`` selects
    the training section as well as the default ones. Every figure is against the reference standard of
    :func:`split_reference` (components of at least ``min_nodule_mm``)."""

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder does not exist")
    out = Path(out) if out else pred_dir
    if include_training and sections is None and fold is None:
        sections = (*DEFAULT_SECTIONS, "training")
    entries = select_cases(manifest, sections, fold, base_dir)
    layout = PredictionLayout(pred_dir)
    present = [e for e in entries if layout.has_mask(e["case_id"])]
    missing = [e["case_id"] for e in entries if e not in present]
    if not present:
        raise InputError(pred_dir, f"holds no prediction for any selected labelled case of {manifest}")
    provenance = check_held_out(pred_dir, [e["case_id"] for e in present], include_training)
    if missing and not allow_missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise InputError(pred_dir, f"{len(missing)} selected case(s) have no prediction: {shown}",
                         hint="predict them, choose --sections/--fold, or pass --allow-missing to score the others")
    if missing:
        logger.warning("%d selected case(s) have no prediction in %s: %s", len(missing), pred_dir, ", ".join(missing))
    data_root = Path(base_dir) if base_dir is not None else Path(manifest).parent
    irrelevant = load_irrelevant(data_root)
    rows, lesions, scans, cand_rows, agreement, n_small = [], [], [], [], [], 0
    for e in present:
        cid = e["case_id"]
        pv, rv = read_binary_label(layout.mask(cid)), read_binary_label(e["label"])
        if not pv.geometry.matches(rv.geometry):
            raise InputError(layout.mask(cid), f"grid differs from the reference label {e['label']} "
                             f"(size {pv.geometry.size} vs {rv.geometry.size})")
        ref, below, small = split_reference(sitk_to_xyz_array(rv.image), rv.geometry, min_nodule_mm)
        pred = without_ignored(sitk_to_xyz_array(pv.image), ref, below)
        n_small += len(small)
        rows.append({"case_id": cid, **case_metrics(pred, ref, rv.geometry.spacing, min_overlap)})
        les, nodules = reference_lesions(pred, ref, rv.geometry)
        lesions += [{"case_id": cid, **r} for r in les]
        cands = load_candidates(pred_dir, cid)
        scans.append(match_scan(cid, cands, nodules, irrelevant.get(cid, []) + small))
        uid = e.get("series_instance_uid") or cid
        cand_rows += [(uid, c, s) for c, s in cands]
        readers = reader_files(data_root / "readers", cid)
        if readers:
            masks = [sitk_to_xyz_array(read_binary_label(p).image) for p in readers]
            agreement += [{"case_id": cid, **r} for r in nodule_agreement(pred, ref, masks)]
    summary = _summary(rows, lesions, scans, agreement, provenance, missing, min_overlap, sections, fold)
    summary["reference_standard"] = {"min_nodule_mm": min_nodule_mm, "components_below_ignored": n_small}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.csv", _csv(rows, ["case_id", *METRICS]))
    atomic_write_text(out / "reference_lesions.csv", _csv(lesions, ["case_id", "lesion", "diameter_mm",
                      "equivalent_diameter_mm", "volume_mm3", "size_bucket", "detected", "lesion_dice"]))
    curve = froc_curve(scans)
    atomic_write_text(out / "froc.csv", froc_csv(curve))
    atomic_write_text(out / "candidates.csv", candidates_csv(cand_rows))
    if agreement:
        atomic_write_text(out / "readers.csv", _csv(agreement, ["case_id", "nodule", "n_readers", "model_vs_consensus",
                                                                "model_vs_readers", "reader_vs_reader"]))
    atomic_write_text(out / "summary.json", dumps_strict(summary))
    if plot:

        _plot_dice(rows, out / "dice.png")
        save_dice_boxplot([r["dice"] for r in rows], out / "dice_box.png")
        plot_froc(curve, summary["detection"]["cpm"], out / "froc.png")
        _plot_worst(rows, {e["case_id"]: e for e in present}, pred_dir, out)
    return {"rows": rows, **summary}


def _summary(rows, lesions, scans: list[ScanDetections], agreement, provenance, missing, min_overlap, sections,
             fold) -> dict:
    n_fp = sum(r["lesion_fp"] for r in rows)
    tot_tp, tot_ref = sum(r["lesion_tp"] for r in rows), sum(r["lesion_tp"] + r["lesion_fn"] for r in rows)
    summary = {
        "n_cases": len(rows), "cases": [r["case_id"] for r in rows], "missing_predictions": missing,
        "selection": {"sections": list(sections) if sections is not None else (None if fold is not None
                                                                               else list(DEFAULT_SECTIONS)),
                      "fold": fold if fold is None or isinstance(fold, int) else list(fold)},
        "provenance": provenance, "min_overlap": min_overlap,
        "metrics": {k: summarize([r[k] for r in rows]) for k in METRICS},
        "lesion_false_positives_per_scan": n_fp / len(rows),
        "lesion_sensitivity_pooled": tot_tp / tot_ref if tot_ref else None,
        "by_size": by_size(lesions), "detection": detection_summary(scans),
        "conventions": {"dice_both_empty": 1.0, "ci": "95% percentile bootstrap over cases (2000 resamples)",
                        "size": "longest axial diameter of the reference nodule (mm)",
                        "undefined": "null"},
    }
    if agreement:
        multi = [a for a in agreement if a["reader_vs_reader"] is not None]
        summary["reader_agreement"] = {
            "n_nodules": len(agreement), "n_nodules_with_two_or_more_readers": len(multi),
            "model_vs_consensus": summarize([a["model_vs_consensus"] for a in agreement]),
            "model_vs_readers": summarize([a["model_vs_readers"] for a in multi]),
            "reader_vs_reader": summarize([a["reader_vs_reader"] for a in multi])}
    return summary


def _plot_worst(rows: list[dict], entries: dict[str, dict], pred_dir: Path, out: Path, n: int = 3) -> None:
    """``worst_<case_id>.png``: prediction against reference through each lesion, for the ``n`` lowest-Dice cases."""

    for old in out.glob("worst_*.png"):
        old.unlink()

    for r in sorted(rows, key=lambda r: r["dice"])[:n]:
        e = entries[r["case_id"]]
        label = sitk.ReadImage(e["label"])
        try:
            ct = read_ct(e["image"], ReadOptions(allow_non_ct=True)).image
        except PipelineError:  # the picture falls back to a blank background; the metrics never depended on it
            ct = label * 0 - 1000
        save_overlays_png(ct, sitk.ReadImage(str(PredictionLayout(pred_dir).mask(r["case_id"]))), label,
                          out / f"worst_{r['case_id']}.png")


def _plot_dice(rows: list[dict], path: Path) -> None:
    import matplotlib  # deferred: 0.4 s of import, needed only when a picture is drawn (matplotlib.use first)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(rows) + 2), 3.2), dpi=90)
    ax.bar(range(len(rows)), [r["dice"] for r in rows], color="tab:green")
    ax.set_xticks(range(len(rows)), [r["case_id"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.axhline(float(np.mean([r["dice"] for r in rows])), color="k", ls="--", lw=1, label="mean")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _fmt(v, width: int = 11) -> str:
    return f"{'n/a':>{width}}" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:>{width}.4g}"


def format_table(result: dict) -> str:
    """Plain-text table: one row per case, then the mean and its 95 % bootstrap interval."""
    cols = ("dice", "iou", "sensitivity", "precision", "hd95_mm", "assd_mm", "lesion_tp", "lesion_fp", "lesion_fn")
    width = max([len("case")] + [len(r["case_id"]) for r in result["rows"]])
    lines = [f"{'case':<{width}} " + " ".join(f"{c:>11}" for c in cols)]
    for r in result["rows"]:
        lines.append(f"{r['case_id']:<{width}} " + " ".join(_fmt(r[c]) for c in cols))
    m = result["metrics"]
    lines.append(f"{'mean':<{width}} " + " ".join(_fmt(m[c]["mean"]) for c in cols))
    lines.append(f"{'95% CI':<{width}} " + " ".join(
        f"{m[c]['ci95_low']:>5.3g}-{m[c]['ci95_high']:<5.3g}" if m[c]["ci95_low"] is not None else f"{'n/a':>11}"
        for c in cols))
    return "\n".join(lines)


def headline(result: dict) -> str:
    """One line: mean Dice with its interval and n, lesion detection, CPM."""
    d, det = result["metrics"]["dice"], result["detection"]
    ci = f" (95% CI {d['ci95_low']:.3f}-{d['ci95_high']:.3f})" if d["ci95_low"] is not None else ""
    cpm = f"CPM {det['cpm']:.3f}" if det["cpm"] is not None else "CPM n/a"
    sens = result["lesion_sensitivity_pooled"]
    return (f"mean Dice {d['mean']:.4f}{ci} over {d['n']} case(s); lesion sensitivity "
            f"{'n/a' if sens is None else f'{sens:.3f}'}, {result['lesion_false_positives_per_scan']:.2f} false "
            f"positives per scan; {cpm} over {det['n_nodules']} nodule(s)")
