"""``monai-pipeline lidc-demo``: LIDC-IDRI end to end without the images.

Real XML reads of ``../shared/lidc`` -> LIDC-shaped DICOM studies (:mod:`monai_pipeline.lidc.synth`) ->
``lidc-convert --per-reader`` -> 2-fold cross-validation (:func:`~monai_pipeline.crossval.cross_validate`) once per
``training.label_mode`` (consensus, soft, any-reader) -> out-of-fold evaluation with the reader-agreement report.
Outputs under ``OUT/``: ``xml/`` (the unpacked archive), ``tcia/`` (the studies), ``converted/`` (images,
labels, reader masks, manifest), ``cv_<mode>/`` (fold models, predictions, report) and ``lidc_demo.json`` /
``lidc_demo.png`` (the side-by-side). The last line printed is each mode's out-of-fold Dice beside the mean
reader-vs-reader Dice.
"""

from __future__ import annotations

import logging
import tarfile
import time
from pathlib import Path

import numpy as np

from monai_pipeline.config import LABEL_MODES, PipelineConfig
from monai_pipeline.crossval import cross_validate
from monai_pipeline.demo import demo_config
from monai_pipeline.errors import InputError
from monai_pipeline.io.paths import extract_tar
from monai_pipeline.io.writer import atomic_path, atomic_write_text, dumps_strict
from monai_pipeline.lidc.convert import convert_lidc
from monai_pipeline.lidc.synth import load_metadata, plan_layout, synthesize_lidc
from monai_pipeline.lidc.xml import parse_read

logger = logging.getLogger(__name__)

SHARED_LIDC = Path(__file__).resolve().parents[2].parent / "shared" / "lidc"
ARCHIVE, METADATA = "tcia-lidc-xml.tar.xz", "LIDC-IDRI_MetaData.csv"
#: the demo's reads: the first ones of the archive (sorted by path) with at most MAX_SLICES slices at a step of at
#: least MIN_STEP_MM (so that 20 studies train on 2 cores in minutes) and at least MIN_CONTOURED contoured nodule
#: reads (something for the readers to agree on)
DEMO_STUDIES, MAX_SLICES, MIN_STEP_MM, MIN_CONTOURED, FOLDS = 20, 48, 1.25, 3, 2


def lidc_demo_config(quick: bool = False) -> PipelineConfig:
    """``default.yaml`` <- ``configs/demo.yaml`` <- ``configs/lidc_demo.yaml``; ``quick`` as for the demo."""

    return demo_config(quick, "lidc_demo.yaml")


def unpack_archive(archive: Path, out: Path) -> Path:
    """The XML archive unpacked under ``out`` (once; no links or paths outside ``out``: see ``extract_tar``)."""
    marker = out / ".unpacked"
    if not marker.is_file():
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tf:
            extract_tar(tf, out)
        marker.write_text(str(archive))
    return out


def select_reads(xml_root: Path, n: int, metadata: dict) -> list[Path]:
    """The first ``n`` CT reads under ``xml_root`` (sorted by path, one per series) meeting the demo's rule."""

    chosen: list[Path] = []
    series: set[str] = set()
    for f in sorted(xml_root.rglob("*.xml")):
        read = parse_read(f)
        if read is None or read.series_uid in series:
            continue
        if sum(not r.is_small for r in read.nodule_reads) < MIN_CONTOURED:
            continue
        layout = plan_layout(read, metadata)
        if len(layout.z_mm) > MAX_SLICES or layout.step_mm < MIN_STEP_MM:
            continue
        chosen.append(f)
        series.add(read.series_uid)
        if len(chosen) == n:
            break
    return chosen


def _mode_row(mode: str, result: dict) -> dict:
    agree = result.get("reader_agreement", {})
    return {"label_mode": mode, "cases": result["n_cases"], "dice_mean": result["metrics"]["dice"]["mean"],
            "dice_ci95": [result["metrics"]["dice"]["ci95_low"], result["metrics"]["dice"]["ci95_high"]],
            "nodule_dice_vs_consensus": agree.get("model_vs_consensus", {}).get("mean"),
            "nodule_dice_vs_readers": agree.get("model_vs_readers", {}).get("mean"),
            "reader_vs_reader": agree.get("reader_vs_reader", {}).get("mean"),
            "nodules_with_two_or_more_readers": agree.get("n_nodules_with_two_or_more_readers"),
            "lesion_sensitivity": result["lesion_sensitivity_pooled"],
            "false_positives_per_scan": result["lesion_false_positives_per_scan"]}


def plot_modes(rows: list[dict], path: Path) -> Path:
    """Bar chart: out-of-fold Dice of each label mode (case mean, per nodule vs consensus and vs each reader)
    beside the readers' own agreement."""
    import matplotlib  # deferred: 0.4 s of import, needed only when a picture is drawn (matplotlib.use first)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    keys = [("dice_mean", "case Dice vs consensus"), ("nodule_dice_vs_consensus", "nodule Dice vs consensus"),
            ("nodule_dice_vs_readers", "nodule Dice vs each reader")]
    x = np.arange(len(rows))
    for i, (k, name) in enumerate(keys):
        ax.bar(x + (i - 1) * 0.25, [r[k] or 0.0 for r in rows], 0.25, label=name)
    rr = rows[0]["reader_vs_reader"]
    if rr is not None:
        ax.axhline(rr, color="k", ls="--", lw=1, label=f"reader vs reader {rr:.3f}")
    ax.set_xticks(x, [r["label_mode"] for r in rows])
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (out of fold)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def run_lidc_demo(out: str | Path, n_studies: int | None = None, quick: bool = False,
                  shared: Path = SHARED_LIDC, modes: tuple[str, ...] = LABEL_MODES) -> dict:
    """The whole LIDC path (module docstring); returns ``lidc_demo.json``'s content."""

    t0 = time.time()
    out = Path(out)
    archive = shared / ARCHIVE
    if not archive.is_file():
        raise InputError(archive, "the LIDC XML archive is needed for lidc-demo (../shared/lidc of this project)")
    n = n_studies or (4 if quick else DEMO_STUDIES)
    xml_root = unpack_archive(archive, out / "xml")
    metadata = shared / METADATA if (shared / METADATA).is_file() else None
    reads = select_reads(xml_root, n, load_metadata(metadata))
    print(f"[1/4] {len(reads)} real XML reads -> LIDC-shaped DICOM studies -> {out / 'tcia'}")
    synth = synthesize_lidc(reads, out / "tcia", metadata=metadata, seed=2026, progress=not quick)
    print(f"      {synth['studies']} studies of {synth['patients']} patients, {synth['nodules']} nodules drawn "
          "from the readers' contours")
    print(f"[2/4] lidc-convert --per-reader -> {out / 'converted'}")
    conv = convert_lidc(out / "tcia" / "LIDC-IDRI", out / "converted", per_reader=True, n_folds=FOLDS,
                        progress=not quick)
    if conv["failed"]:
        raise InputError(out / "converted", f"{conv['failed']} stud(ies) failed to convert (convert.log)")
    manifest = out / "converted" / "manifest.json"
    cfg = lidc_demo_config(quick)
    rows = []
    for i, mode in enumerate(modes, start=1):
        print(f"[3/4] label mode {mode} ({i}/{len(modes)}): {FOLDS}-fold cross-validation -> {out / f'cv_{mode}'}")
        res = cross_validate(manifest, out / f"cv_{mode}", cfg.merged({"training": {"label_mode": mode}}),
                             device="cpu", progress=False)
        rows.append(_mode_row(mode, res))
    print(f"[4/4] side by side -> {out / 'lidc_demo.json'}, {out / 'lidc_demo.png'}")
    result = {"studies": synth["studies"], "patients": synth["patients"], "nodules_converted": conv["nodules"],
              "folds": FOLDS, "epochs": cfg.training.epochs, "modes": rows, "seconds": round(time.time() - t0, 1),
              "reads": [str(r.relative_to(xml_root)) for r in reads]}
    atomic_write_text(out / "lidc_demo.json", dumps_strict(result))
    plot_modes(rows, out / "lidc_demo.png")
    print("| label mode | case Dice (95% CI) | nodule Dice vs consensus | vs each reader | sensitivity | FP/scan |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ci = "" if r["dice_ci95"][0] is None else f" ({r['dice_ci95'][0]:.3f}-{r['dice_ci95'][1]:.3f})"
        f = [("n/a" if r[k] is None else f"{r[k]:.3f}") for k in ("nodule_dice_vs_consensus", "nodule_dice_vs_readers",
                                                                  "lesion_sensitivity")]
        print(f"| {r['label_mode']} | {r['dice_mean']:.3f}{ci} | {f[0]} | {f[1]} | {f[2]} | "
              f"{r['false_positives_per_scan']:.2f} |")
    rr = rows[0]["reader_vs_reader"]
    print(f"lidc-demo: {time.time() - t0:.0f} s; out-of-fold Dice over {rows[0]['cases']} studies: "
          + ", ".join(f"{r['label_mode']} {r['dice_mean']:.3f}" for r in rows)
          + f"; mean reader-vs-reader Dice {'n/a' if rr is None else f'{rr:.3f}'} "
          f"({rows[0]['nodules_with_two_or_more_readers']} nodules with 2+ readers)")
    return result
