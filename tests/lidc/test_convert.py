"""lidc-convert end to end on DICOM series built to match XML reads (synthetic and real)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from monai_pipeline.io import sitk_to_xyz_array
from monai_pipeline.lidc.convert import convert_lidc
from monai_pipeline.lidc.xml import parse_read
from tests.conftest import SHARED
from tests.helpers import run_cli
from tests.lidc.lidc_fixtures import (
    interior_by_ray_casting,
    make_series,
    nodule_xml,
    read_xml,
    roi_xml,
    square_outline,
)

Z = [10.0 + 2.5 * k for k in range(8)]  # slice positions (mm)


def _rect(x0, y0, x1, y1, shape=(64, 64)):
    m = np.zeros(shape, bool)
    m[x0 + 1:x1, y0 + 1:y1] = True  # strictly inside the ring
    return m


@pytest.fixture()
def lidc_root(tmp_path):
    """Patient 1: four nodules seen by 4, 3, 2 and 1 readers, one with a hole, one roi off every slice.
    Patient 2: two CT series (case ids get suffixes). Patient 3: damaged DICOM."""
    root = tmp_path / "LIDC"
    sop = [generate_uid() for _ in Z]
    uid1 = generate_uid()
    s = [[], [], [], []]
    # nodule A: 4 readers, squares widening to the right: x1 = 16 + r, on slices 2 and 3
    for r in range(4):
        rois = [roi_xml(Z[k], sop[k], square_outline(8, 8, 16 + r, 16)) for k in (2, 3)]
        s[r].append(nodule_xml(f"A{r}", rois))
    # nodule B: 3 readers (1..3), each shifted down by r rows, slice 5 only; reader 1 adds a hole
    for r in range(3):
        rois = [roi_xml(Z[5], sop[5], square_outline(30, 30 + r, 40, 40 + r))]
        if r == 0:
            rois.append(roi_xml(Z[5], sop[5], square_outline(33, 33, 37, 37), inclusion=False))
        s[r].append(nodule_xml(f"B{r}", rois, malignancy=r + 1))
    # nodule C: readers 3 and 4, disjoint halves that touch (distance 1 voxel): grouped, consensus = union
    s[2].append(nodule_xml("C2", [roi_xml(Z[1], sop[1], square_outline(44, 8, 50, 14))]))
    s[3].append(nodule_xml("C3", [roi_xml(Z[1], sop[1], square_outline(49, 8, 55, 14))]))
    # nodule D: reader 4 only; its second roi lies between slices with an unknown SOP UID
    s[3].append(nodule_xml("D3", [roi_xml(Z[6], sop[6], square_outline(8, 40, 14, 46)),
                                  roi_xml(Z[6] + 1.2, "1.2.999", square_outline(8, 40, 14, 46))]))
    # a small nodule (single point) and a non-nodule: parsed, never rasterised
    s[0].append(nodule_xml("tiny", [roi_xml(Z[4], sop[4], [(60, 60)])], malignancy=None))
    nn = f"<nonNodule><nonNoduleID>n1</nonNoduleID><imageZposition>{Z[0]}</imageZposition>" \
         f"<imageSOP_UID>{sop[0]}</imageSOP_UID><locus><xCoord>5</xCoord><yCoord>5</yCoord></locus></nonNodule>"
    series1 = make_series(root / "LIDC-T-0001" / "study" / "series", Z, sop, uid1, "LIDC-T-0001")
    (series1 / "069.xml").write_text(read_xml(uid1, s, non_nodules=nn))
    # patient 2 with two series, each with one nodule by one reader
    for j in range(2):
        uid, sops = generate_uid(), [generate_uid() for _ in Z]
        folder = make_series(root / "LIDC-T-0002" / f"study{j}" / "series", Z, sops, uid, "LIDC-T-0002")
        (folder / "read.xml").write_text(read_xml(uid, [[nodule_xml("x", [roi_xml(Z[3], sops[3],
                                                                                   square_outline(20, 20, 30, 30))])]],
                                                  namespace=bool(j)))
    # patient 3: the XML matches, the pixel data are damaged
    uid3, sops3 = generate_uid(), [generate_uid() for _ in Z]
    bad = make_series(root / "LIDC-T-0003" / "study" / "series", Z, sops3, uid3, "LIDC-T-0003")
    (bad / "read.xml").write_text(read_xml(uid3, [[nodule_xml("y", [roi_xml(Z[3], sops3[3],
                                                                           square_outline(20, 20, 30, 30))])]]))
    victim = sorted(p for p in bad.iterdir() if p.suffix == ".dcm")[0]
    victim.write_bytes(victim.read_bytes()[:-5000])
    return root, {"uid1": uid1}


def _arr(path):
    return sitk_to_xyz_array(sitk.ReadImage(str(path)))


def test_consensus_per_reader_table_and_manifest(lidc_root, tmp_path):
    root, ids = lidc_root
    out = tmp_path / "out"
    summary = convert_lidc(root, out, consensus=0.5, min_diameter_mm=0, per_reader=True, progress=False)
    assert summary["failed"] == 1 and "LIDC-T-0003" in summary["failures"]
    assert summary["converted"] == 3  # patient 1 and both series of patient 2
    label = _arr(out / "labels" / "LIDC-T-0001.nii.gz")
    image = sitk.ReadImage(str(out / "images" / "LIDC-T-0001.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16 and label.dtype == np.uint8
    expect = np.zeros(label.shape, bool)
    # A: 4 readers; columns 9..15+r, so >= 2 readers cover columns 9..17 (r = 2, 3 reach 17)
    for k in (2, 3):
        expect[9:18, 9:16, k] = True
    # B: 3 readers; rows 31+r..39+r, >= 1.5 -> >= 2 readers: rows 32..40; reader 1's hole (34..36) is covered
    # by readers 2 and 3 anyway
    expect[31:40, 32:41, 5] = True
    # C: 2 readers, disjoint (columns 45..49 and 50..54): >= 1 of 2 -> the union
    expect[45:55, 9:14, 1] = True
    # D: 1 reader keeps its mask; the roi off every slice is reported, not placed
    expect[9:14, 41:46, 6] = True
    np.testing.assert_array_equal(label > 0, expect)
    # per-reader masks: reader 1 has A (r=0), B with its hole
    r1 = _arr(out / "readers" / "LIDC-T-0001_r1.nii.gz") > 0
    assert r1[9:16, 9:16, 2].all() and not r1[16, 12, 2]
    assert not r1[35, 35, 5] and r1[31, 31, 5]
    rows = list(csv.DictReader(open(out / "nodules.csv")))
    p1 = [r for r in rows if r["case_id"] == "LIDC-T-0001"]
    assert sorted(int(r["n_readers"]) for r in p1) == [1, 2, 3, 4]
    b = next(r for r in p1 if r["n_readers"] == "3")
    assert float(b["malignancy_median"]) == 2.0 and b["readers"] == "1;2;3"
    a = next(r for r in p1 if r["n_readers"] == "4")
    assert float(a["consensus_volume_mm3"]) == pytest.approx(2 * 9 * 7 * 0.7 * 0.7 * 2.5, rel=1e-3)
    assert a["series_instance_uid"] == ids["uid1"]
    log = (out / "convert.log").read_text()
    assert "roi at z=26.2 mm matches no slice" in log
    assert "failed: LIDC-T-0003" in log
    manifest = json.loads((out / "manifest.json").read_text())
    cases = {e["case_id"]: e for e in manifest["training"]}
    assert set(cases) == {"LIDC-T-0001", "LIDC-T-0002_s1", "LIDC-T-0002_s2"}
    assert cases["LIDC-T-0002_s1"]["fold"] == cases["LIDC-T-0002_s2"]["fold"], "patient-level folds"
    assert all(e["patient_id"] and e["series_instance_uid"] for e in cases.values())


def test_min_readers_and_resume(lidc_root, tmp_path):
    root, _ = lidc_root
    out = tmp_path / "out"
    first = convert_lidc(root, out, min_readers=3, min_diameter_mm=0, progress=False)
    rows = list(csv.DictReader(open(out / "nodules.csv")))
    assert sorted(int(r["n_readers"]) for r in rows if r["case_id"] == "LIDC-T-0001") == [3, 4]
    # nodules of fewer readers stay on record as LUNA16's irrelevant findings (neither hit nor false positive)
    with_all = convert_lidc(root, tmp_path / "all", min_readers=1, min_diameter_mm=0, progress=False)
    assert with_all["nodules"] > len(rows)
    irrelevant = list(csv.DictReader(open(out / "irrelevant_findings.csv")))
    fewer = [r for r in irrelevant if r["reason"].startswith("marked by")]
    assert len(fewer) == with_all["nodules"] - len(rows) and all(int(r["n_readers"]) < 3 for r in fewer)
    kept = {(r["case_id"], r["centroid_x_mm"]) for r in rows}
    assert not {(r["case_id"], r["centroid_x_mm"]) for r in fewer} & kept
    again = convert_lidc(root, out, min_readers=3, min_diameter_mm=0, progress=False)
    assert again["skipped"] == first["converted"] == 3 and again["converted"] == 0
    assert again["failed"] == 1, "the damaged case is retried, and fails again"
    assert len(list(csv.DictReader(open(out / "nodules.csv")))) == len(rows)


def test_cli_exit_codes(lidc_root, tmp_path):
    root, _ = lidc_root
    r = run_cli("lidc-convert", "--input", root, "--out", tmp_path / "o", "--min-diameter-mm", "0", "--no-progress",
                "--workers", "2")
    assert r.returncode == 1, r.stderr  # one case failed, the others are done
    assert "converted 3" in r.stdout
    r = run_cli("lidc-convert", "--input", tmp_path / "missing", "--out", tmp_path / "o2")
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.mark.skipif(not (SHARED / "lidc").is_dir(), reason="../shared/lidc not present")
def test_real_xml_on_matching_series(tmp_path):
    """187_023.xml (LIDC-IDRI-0287): one nodule, four readers, two slices. The series is built with the
    read's SOP UIDs at its z positions; the consensus is checked against ray casting of each reader."""
    src = SHARED / "lidc" / "samples" / "187_023.xml"
    read = parse_read(src)
    roi_z = {r.z: r.sop_uid for n in read.nodule_reads for r in n.rois}
    z = [-92.5 + 2.5 * k for k in range(6)]
    sops = [roi_z.get(v, generate_uid()) for v in z]
    folder = make_series(tmp_path / "LIDC" / "LIDC-IDRI-0287" / "s" / "series", z, sops, read.series_uid,
                         "LIDC-IDRI-0287", size=512)
    (folder / "023.xml").write_text(src.read_text())
    out = tmp_path / "out"
    summary = convert_lidc(tmp_path / "LIDC", out, progress=False)
    assert summary["converted"] == 1 and summary["nodules"] == 1
    label = _arr(out / "labels" / "LIDC-IDRI-0287.nii.gz") > 0
    counts = np.zeros(label.shape, int)
    for n in read.nodule_reads:
        for r in n.rois:
            k = z.index(r.z)
            counts[:, :, k] += interior_by_ray_casting([tuple(p) for p in r.points], (512, 512))
    np.testing.assert_array_equal(label, counts >= 2)
    assert label.sum() > 20


def test_evaluate_reports_reader_agreement_on_a_per_reader_conversion(lidc_root, tmp_path):
    """The consensus labels scored as if they were predictions: model vs consensus is exactly 1 per nodule, and
    the report puts the readers' pairwise Dice beside it (readers.csv, summary.json)."""
    import json
    import shutil

    from monai_pipeline.evaluation import evaluate_folder

    root, _ = lidc_root
    out = tmp_path / "out"
    convert_lidc(root, out, consensus=0.5, min_diameter_mm=0, per_reader=True, progress=False)
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in (out / "labels").glob("*.nii.gz"):
        shutil.copy(f, pred / f.name)
    res = evaluate_folder(pred, out / "manifest.json", tmp_path / "rep", sections=("training",))
    ra = res["reader_agreement"]
    assert ra["model_vs_consensus"]["mean"] == 1.0 and ra["n_nodules"] == res["detection"]["n_nodules"]
    assert ra["n_nodules_with_two_or_more_readers"] >= 1
    assert 0.0 < ra["reader_vs_reader"]["mean"] < 1.0
    rows = list(csv.DictReader(open(tmp_path / "rep" / "readers.csv")))
    assert len(rows) == ra["n_nodules"]
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["provenance"]["unverified"], "copied labels record no model: said, not hidden"


def test_killed_at_random_moments_and_resumed(lidc_root, tmp_path):
    """SIGKILL lidc-convert at random moments several times in a row, resuming each time: the end result equals
    an uninterrupted conversion (tables and manifest), and no temporary file is left behind."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    root, _ = lidc_root
    clean = tmp_path / "clean"
    convert_lidc(root, clean, min_diameter_mm=0.0, per_reader=True, progress=False)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "monai_pipeline.cli", "lidc-convert", "--input", str(root), "--out", str(out),
            "--min-diameter-mm", "0", "--per-reader", "--no-progress"]
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(2.5, 5.0))  # imports take ~2-3 s; the cases follow
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr  # the damaged case fails every time; the others are done
    assert kills >= 1
    for name in ("nodules.csv", "irrelevant_findings.csv", "manifest.json"):
        assert (out / name).read_text() == (clean / name).read_text().replace(str(clean), str(out)), name
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(p.name for p in (clean / "labels").iterdir())
    assert not [p for p in out.rglob(".*") if ".part" in p.name], "no temporary files left"
