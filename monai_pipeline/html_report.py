"""``monai-pipeline report DIR``: one self-contained HTML page for a training run, an inference batch or an
evaluation (or a folder holding several, such as the demo's output).

Sections are recognised by their files: a training run by ``log.csv`` (config, per-epoch table, training curve),
an inference batch by ``summary.json`` with case counts (provenance, failures, lesions across the batch,
previews), one-scan ``infer`` runs (several may share a folder) by their done-markers (one row per scan with
its model, lesions, previews), an evaluation by ``summary.json`` with metrics (headline, per-case table,
per-size results, reader agreement, Dice, FROC and worst-case pictures). Images are embedded as data URIs: no
server, no network. A script marks ``<body data-images-loaded="k/n">`` once the page has loaded, so a browser
test can see that every picture decoded.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from monai_pipeline import __version__
from monai_pipeline.errors import InputError
from monai_pipeline.io.layout import PredictionLayout
from monai_pipeline.io.writer import atomic_write_text

MAX_ROWS = 300


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(rows: list[dict], css: str = "", limit: int = MAX_ROWS) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in rows[:limit])
    more = f"<p>{len(rows) - limit} more rows in the CSV file.</p>" if len(rows) > limit else ""
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    try:
        f = float(v)
        return f"{f:.4g}" if "." in str(v) else str(v)
    except (TypeError, ValueError):
        return str(v)


def _csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _training(d: Path) -> str:
    parts = [f"<h2>Training run <code>{html.escape(str(d))}</code></h2>"]
    if (d / "training_curve.png").is_file():
        parts.append(_img(d / "training_curve.png", "training loss and validation Dice"))
    parts.append("<h3>Epochs</h3>" + _table(_csv(d / "log.csv"), "epochs"))
    if (d / "config.yaml").is_file():
        parts.append(f"<details><summary>configuration</summary><pre>{html.escape((d / 'config.yaml').read_text())}"
                     "</pre></details>")
    return "\n".join(parts)


def _inference(d: Path, summary: dict) -> str:
    prov = summary.get("provenance") or {}
    parts = [f"<h2>Inference batch <code>{html.escape(str(d))}</code></h2>",
             _table([{"done": summary.get("done"), "skipped": summary.get("skipped"), "failed": summary.get("failed"),
                      "total": summary.get("total"), "model SHA-256": (prov.get("model_sha256") or "")[:16]}],
                    "counts")]
    failures = [r for f in sorted(d.glob("failures*.csv")) for r in _csv(f)]
    parts.append("<h3>Failures</h3>" + _table(failures, "failures"))
    lesions = [r for f in sorted(d.glob("lesions*.csv")) for r in _csv(f)]
    parts.append("<h3>Lesions</h3>" + _table(lesions, "lesions"))
    pictures = sorted(d.glob("*_preview.png")) + sorted((d / "png").glob("*.png"))
    if pictures:
        parts.append("<h3>Pictures</h3>" + "".join(_img(p, p.stem) for p in pictures[:24]))
    if prov.get("settings"):
        parts.append(f"<details><summary>settings</summary><pre>{html.escape(json.dumps(prov['settings'], indent=1))}"
                     "</pre></details>")
    return "\n".join(parts)


def _scans(d: Path, layout: PredictionLayout) -> str:
    """One-scan ``infer`` runs written into ``d``: a row per scan (from its done-marker), then lesions and pictures."""
    rows, lesions, pictures = [], [], []
    for case_id in layout.done_cases():
        rec = layout.read_marker(case_id) or {}
        prov, geo = rec.get("provenance") or {}, rec.get("geometry") or {}
        rows.append({"scan": case_id, "size (voxels)": " x ".join(map(str, geo.get("size", []))),
                     "spacing (mm)": " x ".join(f"{s:.3g}" for s in geo.get("spacing", [])),
                     "formats": rec.get("format"), "model SHA-256": (prov.get("model_sha256") or "")[:16],
                     "complete": layout.is_complete(case_id)})
        lesions += [{"scan": case_id, **r} for r in _csv(layout.lesions(case_id))]
        pictures += [p for p in (layout.preview(case_id), layout.overlay(case_id)) if p.is_file()]
    parts = [f"<h2>Predictions <code>{html.escape(str(d))}</code></h2>", _table(rows, "scans"),
             "<h3>Lesions</h3>" + _table(lesions, "lesions")]
    if pictures:
        parts.append("<h3>Pictures</h3>" + "".join(_img(p, p.stem) for p in pictures[:24]))
    return "\n".join(parts)


def _evaluation(d: Path, summary: dict) -> str:
    m, det = summary["metrics"], summary.get("detection") or {}
    dice = m["dice"]
    head = [{"cases": summary.get("n_cases"), "mean Dice": dice.get("mean"), "95% CI low": dice.get("ci95_low"),
             "95% CI high": dice.get("ci95_high"), "HD95 mm": m["hd95_mm"].get("mean"),
             "lesion sensitivity": summary.get("lesion_sensitivity_pooled"),
             "FP per scan": summary.get("lesion_false_positives_per_scan"), "CPM": det.get("cpm")}]
    parts = [f"<h2>Evaluation <code>{html.escape(str(d))}</code></h2>", _table(head, "metrics headline"),
             "<h3>Per case</h3>" + _table(_csv(d / "metrics.csv"), "metrics per-case")]
    by_size = summary.get("by_size") or {}
    if by_size:
        parts.append("<h3>By nodule size (longest axial diameter)</h3>" + _table(
            [{"size (mm)": k, "nodules": v["n_nodules"], "sensitivity": v["sensitivity"],
              "lesion Dice": v["lesion_dice"]["mean"]} for k, v in by_size.items()], "by-size"))
    ra = summary.get("reader_agreement")
    if ra:
        parts.append("<h3>Reader agreement</h3>" + _table(
            [{"model vs consensus": ra["model_vs_consensus"]["mean"],
              "model vs readers": ra["model_vs_readers"]["mean"],
              "reader vs reader": ra["reader_vs_reader"]["mean"], "nodules": ra["n_nodules"]}], "readers"))
    for name, caption in (("dice.png", "Dice per case"), ("dice_box.png", "Dice distribution"),
                          ("froc.png", "FROC curve")):
        if (d / name).is_file():
            parts.append(_img(d / name, caption))
    for p in sorted(d.glob("worst_*.png")):
        parts.append(_img(p, f"lowest Dice: {p.stem[len('worst_'):]} (prediction green, reference red)"))
    return "\n".join(parts)


def _section(d: Path) -> tuple[int, str] | None:
    """(order, html) of the folder's section: evaluations first, then inference batches, then training runs."""
    if (d / "log.csv").is_file() and (d / "config.yaml").is_file():
        return 2, _training(d)
    summary_path = d / "summary.json"
    if not summary_path.is_file() and (layout := PredictionLayout(d)).done_cases():
        return 1, _scans(d, layout)
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            return None
        if "metrics" in summary:
            return 0, _evaluation(d, summary)
        if "done" in summary:
            return 1, _inference(d, summary)
    return None


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px;text-align:right}th{background:#eee}
figure{display:inline-block;margin:.5em}img{max-width:900px}figcaption{font-size:12px;color:#444}
code{background:#f4f4f4}"""
SCRIPT = """window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0){ok++;}}
document.body.setAttribute('data-images-loaded',ok+'/'+im.length);});"""


def build_report(folder: str | Path) -> str:
    """The HTML page for ``folder`` and its immediate subfolders (see the module docstring)."""

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    found = [s for d in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if (s := _section(d))]
    if not found:
        raise InputError(folder, "holds no training run, prediction or evaluation report (nor do its subfolders)")
    body = "\n<hr>\n".join(html_text for _, html_text in sorted(found, key=lambda t: t[0]))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>monai-pipeline report: {html.escape(folder.name)}"
            f"</title><style>{STYLE}</style></head><body><h1>monai-pipeline report</h1>"
            f"<p>{html.escape(str(folder.resolve()))}; monai-pipeline {__version__}. "
            "Research software: not for clinical "
            f"decisions.</p>{body}<script>{SCRIPT}</script></body></html>")


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write :func:`build_report` to ``out`` (default ``FOLDER/report.html``) atomically."""

    return atomic_write_text(Path(out) if out else Path(folder) / "report.html", build_report(folder))
