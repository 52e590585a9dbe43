"""The HTML report in a real browser: headless Chromium (Debian's package) loads the page from disk, every
embedded image decodes, and the metrics table is there. Skipped, saying how to install it, without Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.helpers import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_dataset, trained_tiny_model):
    """An inference batch with previews and its evaluation, side by side in one folder."""
    root = tmp_path_factory.mktemp("results")
    r = run_cli("infer", "--model", trained_tiny_model, "--manifest", tiny_dataset / "manifest.json", "--sections",
                "validation,test", "--out", root / "predictions", "--device", "cpu", "--no-progress", "--preview")
    assert r.returncode == 0, r.stderr
    r = run_cli("evaluate", "--pred", root / "predictions", "--manifest", tiny_dataset / "manifest.json", "--out",
                root / "evaluation")
    assert r.returncode == 0, r.stderr
    return root


def test_outputs_for_people(results, tiny_dataset):
    pred = results / "predictions"
    cases = [e["case_id"] for s in ("validation",
                                    "test") for e in json.loads((tiny_dataset / "manifest.json").read_text())[s]]
    for cid in cases:
        assert (pred / f"{cid}_preview.png").stat().st_size > 1000
        stats = json.loads((pred / f"{cid}_stats.json").read_text())
        assert stats["case_id"] == cid and len(stats["model"]["sha256"]) == 64
        assert all({"volume_ml", "max_hu", "centroid_lps_mm", "score"} <= set(le) for le in stats["lesions"])
    batch = (pred / "lesions.csv").read_text().splitlines()
    per_case = sum(len((pred / f"{cid}_lesions.csv").read_text().splitlines()) - 1 for cid in cases)
    assert batch[0].startswith("case_id,lesion") and len(batch) - 1 == per_case
    assert (results / "evaluation" / "dice_box.png").is_file() and list((results / "evaluation").glob("worst_*.png"))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed: apt-get update && apt-get install -y "
                                               "chromium (Debian's package) to run this test")
def test_report_renders_in_headless_chromium(results, tmp_path):
    r = run_cli("report", results)
    assert r.returncode == 0, r.stderr
    page = results / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text, "self-contained: nothing fetched"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, dom[:500]
    ok, total = map(int, loaded.groups())
    assert total >= 5 and ok == total, f"{ok} of {total} images loaded"
    assert '<table class="metrics headline"' in dom and "mean Dice" in dom and "Inference batch" in dom


def test_report_on_one_scan_runs_sharing_a_folder(tiny_dataset, trained_tiny_model, tmp_path):
    """The commonest use: ``infer --input SCAN --out DIR`` twice into one folder; ``report DIR`` shows both."""
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    entries = (manifest["validation"] + manifest["test"])[:2]
    assert len(entries) == 2
    out = tmp_path / "mine"
    for e in entries:
        r = run_cli("infer", "--model", trained_tiny_model, "--input", tiny_dataset / e["image"], "--out", out,
                    "--device", "cpu",
                    "--no-progress", "--preview")
        assert r.returncode == 0, r.stderr
    r = run_cli("report", out)
    assert r.returncode == 0, r.stderr
    page = (out / "report.html").read_text()
    assert "<h2>Predictions" in page
    for e in entries:
        assert f"<td>{e['case_id']}</td>" in page
    assert page.count("<img ") >= 2, "both previews embedded"
