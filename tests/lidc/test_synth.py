"""``synth --lidc-xml`` on real LIDC reads, converted by ``lidc-convert``, checked against masks rasterised
independently in this test (ElementTree + pydicom + even-odd ray casting + connected components), and the
non-uniform series path."""

from __future__ import annotations

import json
import shutil
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from monai_pipeline.io.paths import extract_tar
from tests.conftest import SHARED

LIDC = SHARED / "lidc"
pytestmark = pytest.mark.skipif(not (LIDC / "tcia-lidc-xml.tar.xz").is_file(), reason="../shared/lidc not present")

#: real reads of different kinds: 5 mm slices with nodules of 1, 3 and 4 readers (187/254); exclusion rois
#: (185/263); two series of one patient, LIDC-IDRI-0365 (187/107, 187/108); nodules of 2-4 readers (185/113);
#: nodules marked by a single reader (188/281)
READS = ("187/254.xml", "185/263.xml", "187/107.xml", "187/108.xml", "185/113.xml", "188/281.xml")


def _ray_cast(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Even-odd ray casting from each pixel centre towards +x (vectorised over the polygon's box); the outline
    pixels themselves excluded (the LIDC convention)."""
    mask = np.zeros(shape, bool)
    pts = np.asarray(points, float)
    if len(pts) < 3:
        return mask
    x0, y0 = np.maximum(pts.min(0).astype(int), 0)
    x1, y1 = np.minimum(pts.max(0).astype(int), np.asarray(shape) - 1)
    px, py = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1), indexing="ij")
    inside = np.zeros(px.shape, bool)
    for (xa, ya), (xb, yb) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        if ya == yb:
            continue
        crosses = (ya > py) != (yb > py)
        xc = xa + (py - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (xc > px)
    mask[x0:x1 + 1, y0:y1 + 1] = inside
    ok = (pts[:, 0] >= 0) & (pts[:, 0] < shape[0]) & (pts[:, 1] >= 0) & (pts[:, 1] < shape[1])
    mask[pts[ok, 0].astype(int), pts[ok, 1].astype(int)] = False
    return mask


def _local(el: ET.Element) -> ET.Element:
    for e in el.iter():
        e.tag = e.tag.rsplit("}", 1)[-1]
    return el


def independent_reader_masks(xml: Path, series: Path) -> tuple[list[np.ndarray], dict]:
    """One (x, y, k) mask per reading session from the XML and the series' own headers (pydicom), slices in
    ascending z; contoured nodules only (a single edge point marks a nodule under 3 mm)."""
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.glob("*.dcm"))]
    heads.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    k_of = {str(d.SOPInstanceUID): k for k, d in enumerate(heads)}
    shape = (int(heads[0].Columns), int(heads[0].Rows), len(heads))
    root = _local(ET.parse(xml).getroot())
    masks = []
    for sess in root.findall("readingSession"):
        m = np.zeros(shape, bool)
        for nod in sess.findall("unblindedReadNodule"):
            rois = nod.findall("roi")
            if all(len(r.findall("edgeMap")) <= 1 for r in rois):
                continue
            inc, exc = {}, {}
            for r in rois:
                k = k_of.get(r.findtext("imageSOP_UID").strip())
                if k is None:
                    continue
                pts = np.array([[int(e.findtext("xCoord")), int(e.findtext("yCoord"))] for e in r.findall("edgeMap")])
                target = exc if r.findtext("inclusion", "TRUE").strip().upper() == "FALSE" else inc
                target.setdefault(k, np.zeros(shape[:2], bool))
                target[k] |= _ray_cast(pts, shape[:2])
            for k, sl in inc.items():
                m[:, :, k] |= sl & ~exc.get(k, np.zeros(shape[:2], bool))
        masks.append(m)
    return masks, {"z": [float(d.ImagePositionPatient[2]) for d in heads], "shape": shape}


def independent_consensus(readers: list[np.ndarray], level: float = 0.5) -> np.ndarray:
    """A nodule = a 26-connected component of the readers' union; its readers = those whose mask touches it;
    consensus = voxels marked by at least ``level`` of them."""
    count = np.sum(readers, axis=0)
    comp, n = ndimage.label(count > 0, np.ones((3, 3, 3)))
    out = np.zeros(count.shape, bool)
    for c in range(1, n + 1):
        region = comp == c
        n_readers = sum(bool((r & region).any()) for r in readers)
        out |= region & (count >= level * n_readers - 1e-9)
    return out


def _nii(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def lidc_studies(tmp_path_factory) -> tuple[Path, dict]:
    from monai_pipeline.lidc.synth import synthesize_lidc

    tmp = tmp_path_factory.mktemp("lidc_synth")
    with tarfile.open(LIDC / "tcia-lidc-xml.tar.xz") as tf:
        members = [tf.getmember(f"tcia-lidc-xml/{r}") for r in READS]
        extract_tar(tf, tmp / "xml", members)
    summary = synthesize_lidc([tmp / "xml"], tmp / "tcia", metadata=LIDC / "LIDC-IDRI_MetaData.csv", seed=7,
                              progress=False)
    return tmp, summary


@pytest.fixture(scope="module")
def converted(lidc_studies) -> Path:
    from monai_pipeline.lidc.convert import convert_lidc

    tmp, _ = lidc_studies
    s = convert_lidc(tmp / "tcia" / "LIDC-IDRI", tmp / "conv", per_reader=True, min_diameter_mm=0.0, progress=False)
    assert s["failed"] == 0 and s["converted"] == len(READS)
    return tmp / "conv"


def test_studies_are_laid_out_like_a_tcia_download(lidc_studies) -> None:
    tmp, summary = lidc_studies
    assert summary["studies"] == len(READS) and summary["patients"] == len(READS) - 1
    for rec in summary["records"]:
        folder = tmp / "tcia" / rec["folder"]
        parts = folder.relative_to(tmp / "tcia").parts
        assert parts[0] == "LIDC-IDRI" and parts[1] == rec["patient_id"] and len(parts) == 4
        xml = next(folder.glob("*.xml"))
        root = _local(ET.parse(xml).getroot())
        header_uid = root.find("ResponseHeader").findtext("SeriesInstanceUid").strip()
        heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]
        assert {str(d.SeriesInstanceUID) for d in heads} == {header_uid}
        assert all(d.PatientID == rec["patient_id"] for d in heads)
        # every SOP UID the readers used is a slice of the series, at the position the XML gives
        pos = {str(d.SOPInstanceUID): float(d.ImagePositionPatient[2]) for d in heads}
        for roi in root.iter("roi"):
            assert abs(pos[roi.findtext("imageSOP_UID").strip()] - float(roi.findtext("imageZposition"))) < 1e-3
    steps = {rec["patient_id"]: rec["step_mm"] for rec in summary["records"]}
    assert steps["LIDC-IDRI-0509"] == 5.0


def test_nodules_sit_in_lung_tissue(lidc_studies, converted) -> None:
    """The phantom is shifted so that its lungs hold the readers' nodules; those it cannot hold get a pocket.
    Either way each consensus nodule is surrounded by aerated lung in its slices, as a real nodule is."""
    _, summary = lidc_studies
    nodules = [n for rec in summary["records"] for n in rec["nodules"]]
    for rec in summary["records"]:
        assert rec["lung_pockets"] == sum(n["pocket"] for n in rec["nodules"])
        assert all(n["pocket"] == (n["in_lung_fraction"] < 0.95) for n in rec["nodules"])
        assert all(abs(s) <= 30.0 for s in rec["phantom_shift_mm"])
    assert sum(not n["pocket"] for n in nodules) >= 2 * len(nodules) / 3, "most nodules lie in the phantom's lungs"
    for img_path in sorted((converted / "images").glob("*.nii.gz")):
        hu = _nii(img_path).astype(float)
        comp, n = ndimage.label(_nii(converted / "labels" / img_path.name) > 0, np.ones((3, 3, 3)))
        for c in range(1, n + 1):
            nod = comp == c
            near = ndimage.binary_dilation(nod, np.ones((3, 3, 1), bool), iterations=3)
            ring = ndimage.binary_dilation(near, np.ones((3, 3, 1), bool), iterations=3) & ~near & ~(comp > 0)
            assert np.mean(hu[ring] < -500) > 0.6, (img_path.name, c)  # measured 0.74-1.0


def test_lidc_shaped_slices_pass_the_iod_validator(lidc_studies) -> None:
    from tests.helpers import dciodvfy_errors

    tmp, summary = lidc_studies
    for rec in summary["records"]:
        first = sorted((tmp / "tcia" / rec["folder"]).glob("*.dcm"))[0]
        assert dciodvfy_errors(first) == [], rec["folder"]


def test_consensus_and_reader_masks_match_an_independent_rasterisation(lidc_studies, converted) -> None:
    from monai_pipeline.io.reader import read_ct

    tmp, summary = lidc_studies
    manifest = json.loads((converted / "manifest.json").read_text())["training"]
    by_uid = {e["series_instance_uid"]: e for e in manifest}
    n_readers_seen, exclusions = set(), 0
    for rec in summary["records"]:
        folder = tmp / "tcia" / rec["folder"]
        e = by_uid[rec["series_uid"]]
        readers, info = independent_reader_masks(next(folder.glob("*.xml")), folder)
        label = _nii(converted / e["label"]).astype(bool)
        assert label.shape == info["shape"]
        expected = independent_consensus(readers)
        assert expected.sum() > 0
        np.testing.assert_array_equal(label, expected, err_msg=e["case_id"])
        for k, r in enumerate(readers, start=1):
            np.testing.assert_array_equal(_nii(converted / "readers" / f"{e['case_id']}_r{k}.nii.gz").astype(bool), r)
        np.testing.assert_array_equal(_nii(converted / e["label_readers"]), np.sum(readers, axis=0))
        assert e["n_readers"] == len(readers) and e["source"] == "lidc-synthetic"
        case = json.loads((converted / "cases" / f"{e['case_id']}.json").read_text())
        exclusions += case["read_counts"]["exclusion_rois"]
        n_readers_seen |= {n["n_readers"] for n in case["nodules"]}
        # the pixels show the nodules the readers drew: denser inside the consensus than just outside the union
        assert read_ct(converted / e["image"]).synthetic  # the mark survives the conversion to NIfTI
        hu = _nii(converted / e["image"]).astype(np.float32)
        union = np.sum(readers, axis=0) > 0
        ring = ndimage.binary_dilation(union, np.ones((3, 3, 1), bool), iterations=2) & ~union
        assert hu[label].mean() > hu[ring].mean() + 100.0, e["case_id"]
    assert {1, 2, 3, 4} <= n_readers_seen
    assert exclusions > 0
    two = [e for e in manifest if e["patient_id"] == "LIDC-IDRI-0365"]
    assert sorted(e["case_id"] for e in two) == ["LIDC-IDRI-0365_s1", "LIDC-IDRI-0365_s2"]
    assert len({e["fold"] for e in two}) == 1


def test_non_uniform_series_is_resampled_with_masks_carried_along(lidc_studies, converted, tmp_path) -> None:
    """Slices removed from a study (two beyond the nodule, as in a gap, and one through it): the image is
    interpolated onto a uniform grid, the masks follow by nearest slice, and the record says so."""
    from monai_pipeline.lidc.convert import convert_lidc

    tmp, summary = lidc_studies
    rec = next(r for r in summary["records"] if r["patient_id"] == "LIDC-IDRI-0824")
    src = tmp / "tcia" / rec["folder"]
    dst = tmp_path / "LIDC-IDRI" / "p" / "s" / "series"
    shutil.copytree(src, dst)
    full = _nii(converted / "labels_readers" / "LIDC-IDRI-0824.nii.gz")
    marked = np.flatnonzero(full.any(axis=(0, 1)))
    files = sorted(dst.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                             .ImagePositionPatient[2]))
    through = int(marked[len(marked) // 2])
    gone = [files[1], files[2], files[through]]
    for f in gone:
        f.unlink()
    out = tmp_path / "conv"
    s = convert_lidc(tmp_path / "LIDC-IDRI", out, per_reader=True, min_diameter_mm=0.0, progress=False)
    assert s["failed"] == 0
    entry = json.loads((out / "manifest.json").read_text())["training"][0]
    assert entry["resampled"] is True
    case = json.loads((out / "cases" / f"{entry['case_id']}.json").read_text())
    r = case["resampled"]
    assert r["source_slices"] == len(files) - 3 and r["slices"] == len(files)
    assert r["spacing_mm"] == rec["step_mm"] and r["interpolated_slices"] == 3
    counts = _nii(out / entry["label_readers"])
    assert counts.shape == full.shape
    # the readers' rois on the removed slice are placed by their z position on the interpolated slice; the
    # other interpolated slices take their nearest original slice's masks (empty here): the same masks
    np.testing.assert_array_equal(counts, full)
    np.testing.assert_array_equal(_nii(out / entry["label"]), _nii(converted / "labels" / "LIDC-IDRI-0824.nii.gz"))


def test_carry_along_slices_is_nearest_slice_unless_an_roi_lies_there() -> None:
    from monai_pipeline.lidc.convert import carry_along_slices

    shape = (4, 4, 6)
    m = np.zeros(shape, bool)
    m[1, 1, 0] = m[2, 2, 3] = m[3, 3, 4] = True  # slices 0 and 3 original; 4 interpolated but with its own roi
    nearest = np.array([0, 0, 3, 3, 3, 5])  # slices 1, 2 and 4 hold no original slice
    out = np.zeros(shape, bool).reshape(-1)
    out[carry_along_slices(np.flatnonzero(m.reshape(-1)), shape, nearest)] = True
    out = out.reshape(shape)
    assert out[1, 1, 1] and not out[2, 2, 1]  # from slice 0
    assert out[2, 2, 2] and not out[1, 1, 2]  # from slice 3
    assert out[3, 3, 4] and not out[2, 2, 4]  # its own roi kept, nothing carried over it
    assert out.sum() == 5
    assert np.array_equal(carry_along_slices(np.array([5]), shape, None), [5])


def test_infer_step() -> None:
    from monai_pipeline.lidc.synth import DEFAULT_STEP_MM, infer_step

    assert infer_step(np.array([-100.0, -101.25, -102.5, -105.0])) == 1.25
    assert infer_step(np.array([-100.0, -102.5, -107.5, -107.6])) == 2.5  # a 0.1 mm outlier is ignored
    assert infer_step(np.array([10.0, 22.0, 46.0])) == 3.0  # only far-apart marks: the usual step dividing 12 mm
    assert infer_step(np.array([5.0, 5.0])) == DEFAULT_STEP_MM


def test_cli_synth_lidc_xml_and_bad_input(tmp_path) -> None:
    from monai_pipeline.cli import main

    assert main(["synth", "--lidc-xml", str(LIDC / "samples" / "187_023.xml"), str(LIDC / "samples" / "185_068.xml"),
                 "--out", str(tmp_path / "s"), "--metadata", str(LIDC / "LIDC-IDRI_MetaData.csv")]) == 0
    assert len(list((tmp_path / "s" / "LIDC-IDRI" / "LIDC-IDRI-0287").rglob("*.dcm"))) > 10
    assert main(["synth", "--lidc-xml", str(tmp_path / "missing.xml"), "--out", str(tmp_path / "t")]) == 2
    assert not (tmp_path / "t").exists()
    assert main(["synth", "--out", str(tmp_path / "u")]) == 2
    # a damaged read among good ones: one line naming it, exit 2, nothing written
    bad = tmp_path / "xml" / "bad.xml"
    bad.parent.mkdir()
    shutil.copy(LIDC / "samples" / "187_023.xml", tmp_path / "xml" / "good.xml")
    bad.write_text("<LidcReadMessage><ResponseHeader>")
    assert main(["synth", "--lidc-xml", str(tmp_path / "xml"), "--out", str(tmp_path / "v")]) == 2
    assert not (tmp_path / "v" / "LIDC-IDRI").exists()
