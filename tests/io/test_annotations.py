"""DICOM annotations both ways: masks written as SEG (single and per-lesion segments) and RTSTRUCT read back onto
their series in every orientation the generator writes; an independent RTSTRUCT rasteriser (pydicom and numpy
only) agrees; annotations on another series, frame of reference or with open contours are refused with one line;
a manifest whose labels are SEG files scores as the same NIfTI labels."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.helpers import dciodvfy_errors, run_cli

hd = pytest.importorskip("highdicom")

CFG = dict(matrix=48, spacing_xy=(6.0, 7.0), spacing_z=(4.0, 6.0), extent_z_mm=100.0, n_nodules=(2, 4),
           diameter_mm=(10.0, 24.0))


def _series(folder, seed: int, orientation: str):
    """A synthetic case written as a DICOM series: (series folder, its label on the series' grid (x, y, z))."""
    from monai_pipeline.data.synth_dataset import _dicom_safe
    from monai_pipeline.data.synthetic import SynthConfig, generate_case
    from monai_pipeline.io.dicom_writer import write_ct_series
    from monai_pipeline.io.geometry import sitk_to_xyz_array

    case = _dicom_safe(generate_case(seed, SynthConfig(**CFG), orientation=orientation))
    write_ct_series(case.image, folder, rng=np.random.default_rng(seed))
    return folder, sitk_to_xyz_array(case.label)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """One case per orientation the generator writes (axial head/feet first, prone, flipped rows, left-handed
    (written right-handed), oblique), two of them with a second seed: a batch of 8."""
    from monai_pipeline.data.synthetic import ORIENTATIONS

    root = tmp_path_factory.mktemp("annot")
    plan = [(i, o) for i, o in enumerate(ORIENTATIONS)] + [(10, "axial_hf"), (11, "oblique")]
    return [_series(root / f"{o}_{i}", i, o) for i, o in plan]


def _files_and_source(folder):
    from monai_pipeline.io import read_ct
    from monai_pipeline.io.source import source_series

    return [s.path for s in read_ct(folder).slices], source_series(folder)


def _lesions(label, geometry):
    from monai_pipeline.postprocess import lesion_table

    return lesion_table(label, geometry, return_labels=True)


def test_seg_round_trip_single_and_per_lesion_is_voxel_exact(cases, tmp_path):
    from monai_pipeline.io.dicom_seg import read_dicom_seg, write_dicom_seg

    for folder, label in cases:
        files, src = _files_and_source(folder)
        rows, labels = _lesions(label, src.geometry)
        assert len(rows) >= 2
        single = write_dicom_seg(label, files, tmp_path / f"{folder.name}_s.dcm")
        assert np.array_equal(read_dicom_seg(single, src), label > 0), folder.name
        per = write_dicom_seg(labels, files, tmp_path / f"{folder.name}_l.dcm", per_lesion=True,
                              volumes_mm3={r["lesion"]: r["volume_mm3"] for r in rows})
        seg = hd.seg.segread(str(per))
        assert list(seg.segment_numbers) == [r["lesion"] for r in rows]
        assert f"{rows[1]['volume_mm3']:.1f} mm3" in seg.get_segment_description(2).SegmentDescription
        assert np.array_equal(read_dicom_seg(per, src), label > 0)
        for r in rows:  # segment k by number and by label = lesion k of the table
            k = r["lesion"]
            assert np.array_equal(read_dicom_seg(per, src, k), labels == k)
        assert np.array_equal(read_dicom_seg(per, src, f"Nodule {len(rows)}"), labels == len(rows))


def _independent_rtstruct(path, folder) -> np.ndarray:
    """An RTSTRUCT rasterised with pydicom and numpy only: each contour's points projected onto the slice whose
    position (pydicom, along the normal) it lies on, pixel centres inside by even-odd ray casting."""
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    iop = np.asarray(dss[0].ImageOrientationPatient, float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    dss.sort(key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)))
    by_uid = {str(d.SOPInstanceUID): k for k, d in enumerate(dss)}
    dy, dx = (float(v) for v in dss[0].PixelSpacing)  # row spacing (y), column spacing (x)
    out = np.zeros((int(dss[0].Columns), int(dss[0].Rows), len(dss)), bool)
    rs = pydicom.dcmread(str(path))
    for roi in rs.ROIContourSequence:
        for c in roi.ContourSequence:
            k = by_uid[str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            origin = np.asarray(dss[k].ImagePositionPatient, float)
            pts = np.asarray(c.ContourData, float).reshape(-1, 3) - origin
            px, py = pts @ row_dir / dx, pts @ col_dir / dy
            gx, gy = np.meshgrid(np.arange(out.shape[0]), np.arange(out.shape[1]), indexing="ij")
            inside = np.zeros(gx.shape, bool)
            for xa, ya, xb, yb in zip(px, py, np.roll(px, -1), np.roll(py, -1), strict=True):
                if ya == yb:
                    continue
                crosses = (ya > gy) != (yb > gy)
                inside ^= crosses & (xa + (gy - ya) * (xb - xa) / (yb - ya) > gx)
            out[:, :, k] ^= inside
    return out


def test_rtstruct_round_trip_dice_in_every_orientation_and_independent_reader(cases, tmp_path):
    from monai_pipeline.io.rtstruct import read_rtstruct, write_rtstruct

    for folder, label in cases:
        files, src = _files_and_source(folder)
        rows, labels = _lesions(label, src.geometry)
        path = write_rtstruct(labels, src.geometry, files, tmp_path / f"{folder.name}_rt.dcm")
        back = read_rtstruct(path, src)
        truth = label > 0
        dice = 2 * (back.astype(bool) & truth).sum() / (back.sum() + truth.sum())
        assert dice >= 0.98, (folder.name, dice)
        ours_2 = read_rtstruct(path, src, "Nodule 2")
        assert np.array_equal(ours_2, labels == 2) or 2 * (ours_2 & (labels == 2)).sum() / (
            ours_2.sum() + (labels == 2).sum()) >= 0.98
        independent = _independent_rtstruct(path, folder)
        agree = 2 * (independent & back.astype(bool)).sum() / (independent.sum() + back.sum())
        assert agree >= 0.98, (folder.name, agree)
        assert pydicom.dcmread(str(path)).StructureSetROISequence[len(rows) - 1].ROIName == f"Nodule {len(rows)}"


def _rewrite(src_path, dst_path, change):
    ds = pydicom.dcmread(str(src_path))
    change(ds)
    ds.save_as(str(dst_path))
    return dst_path


def test_misplaced_annotations_are_refused_with_one_line(cases, tmp_path):
    from monai_pipeline.errors import InputError
    from monai_pipeline.io.annotations import read_annotation
    from monai_pipeline.io.dicom_seg import write_dicom_seg
    from monai_pipeline.io.rtstruct import write_rtstruct

    (folder, label), (other, _) = cases[0], cases[1]
    files, src = _files_and_source(folder)
    _, other_src = _files_and_source(other)
    seg = write_dicom_seg(label, files, tmp_path / "a_seg.dcm")
    rt = write_rtstruct(_lesions(label, src.geometry)[1], src.geometry, files, tmp_path / "a_rt.dcm")
    with pytest.raises(InputError, match="frame of reference"):
        read_annotation(seg, other_src)
    with pytest.raises(InputError, match="frame of reference"):
        read_annotation(rt, other_src)
    with pytest.raises(InputError, match="no segment numbered or labelled 'Lung'"):
        read_annotation(seg, src, "Lung")
    with pytest.raises(InputError, match="no ROI named or numbered 9 "):
        read_annotation(rt, src, 9)

    def open_contour(ds):
        ds.ROIContourSequence[0].ContourSequence[0].ContourGeometricType = "OPEN_PLANAR"

    with pytest.raises(InputError, match="OPEN_PLANAR, not a closed outline"):
        read_annotation(_rewrite(rt, tmp_path / "open.dcm", open_contour), src)

    def missing_slice(ds):
        ds.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"

    with pytest.raises(InputError, match="references slice 1.2.3.4, which is not in the image series"):
        read_annotation(_rewrite(rt, tmp_path / "miss.dcm", missing_slice), src)

    def off_plane(ds):
        c = ds.ROIContourSequence[0].ContourSequence[0]
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        pts[0] += 0.4 * src.geometry.spacing[2] * np.asarray(src.geometry.direction_matrix)[:, 2]
        c.ContourData = [f"{v:.4f}" for v in pts.ravel()]

    with pytest.raises(InputError, match="does not lie on a slice"):
        read_annotation(_rewrite(rt, tmp_path / "tilt.dcm", off_plane), src)

    def seg_missing_slice(ds):
        ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"

    with pytest.raises(InputError, match="slice\\(s\\) not in the image series"):
        read_annotation(_rewrite(seg, tmp_path / "seg_miss.dcm", seg_missing_slice), src)
    with pytest.raises(InputError, match="needs its DICOM series folder"):
        from monai_pipeline.io.source import source_series

        source_series(tmp_path / "a_seg.dcm")


@pytest.fixture(scope="module")
def dicom_dataset(tmp_path_factory):
    """A DICOM synthetic dataset with its labels as NIfTI, as SEG files and as RTSTRUCT files."""
    from monai_pipeline.data.synth_dataset import synthesize
    from monai_pipeline.data.synthetic import SynthConfig
    from monai_pipeline.io import read_ct, read_label
    from monai_pipeline.io.dicom_seg import write_dicom_seg
    from monai_pipeline.io.geometry import sitk_to_xyz_array
    from monai_pipeline.io.rtstruct import write_rtstruct

    root = tmp_path_factory.mktemp("dcmset")
    synthesize(root, 4, seed=3, fmt="dicom", cfg=SynthConfig(**CFG), n_test=2, n_val=0, progress=False)
    for kind in ("seg", "rt"):
        (root / kind).mkdir()
    for folder in sorted((root / "dicom").iterdir()):
        vol = read_ct(folder)
        label = sitk_to_xyz_array(read_label(root / "labels" / f"{folder.name}.nii.gz").image)
        files = [s.path for s in vol.slices]
        write_dicom_seg(label, files, root / "seg" / f"{folder.name}_seg.dcm")
        write_rtstruct(_lesions(label, vol.geometry)[1], vol.geometry, files, root / "rt" / f"{folder.name}.dcm")
    return root


def test_manifest_and_evaluate_with_seg_labels_score_as_nifti_labels(dicom_dataset, tmp_path):
    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.io import read_label
    from monai_pipeline.io.geometry import sitk_to_xyz_array

    root = dicom_dataset
    for kind in ("labels", "seg", "rt"):
        r = run_cli("manifest", "--images", root / "dicom", "--labels", root / kind, "--out", tmp_path / f"{kind}.json",
                    "--folds", "2", "--test-fraction", "0.5")
        assert r.returncode == 0, r.stderr
    r = run_cli("check", "--manifest", tmp_path / "rt.json")
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((tmp_path / "seg.json").read_text())
    first, second = data["training"][0], data["training"][1]
    first["label"] = second["label"]  # another series' SEG: check lists it, naming the frame of reference
    (tmp_path / "wrong.json").write_text(json.dumps(data))
    r = run_cli("check", "--manifest", tmp_path / "wrong.json")
    assert r.returncode == 2 and "frame of reference" in r.stdout + r.stderr
    nifti = {e["case_id"]: e for s in ("training", "test") for e in load_manifest(tmp_path / "labels.json", s)}
    for kind in ("seg", "rt"):
        for s in ("training", "test"):
            for e in load_manifest(tmp_path / f"{kind}.json", s):
                assert e["label_source"].endswith(".dcm") and e["label"].endswith(".nii.gz")
                ours = sitk_to_xyz_array(read_label(e["label"]).image)
                assert np.array_equal(ours, sitk_to_xyz_array(read_label(nifti[e["case_id"]]["label"]).image))
    # a prediction folder scored against either manifest: the same figures
    pred = tmp_path / "pred"
    pred.mkdir()
    for e in nifti.values():
        img = sitk.ReadImage(e["label"])
        sitk.WriteImage(sitk.BinaryDilate(img, [1, 1, 0]), str(pred / f"{e['case_id']}.nii.gz"))
    scores = {}
    for kind in ("labels", "seg"):
        r = run_cli("evaluate", "--pred", pred, "--manifest", tmp_path / f"{kind}.json", "--out",
                    tmp_path / f"ev_{kind}", "--sections", "training,test", "--include-training")
        assert r.returncode == 0, r.stderr
        summary = json.loads((tmp_path / f"ev_{kind}" / "summary.json").read_text())
        scores[kind] = {k: summary[k] for k in ("metrics", "lesion_false_positives_per_scan", "detection")}
        assert (tmp_path / f"ev_{kind}" / "metrics.csv").is_file()
    assert scores["seg"] == scores["labels"]
    assert (tmp_path / "ev_seg" / "metrics.csv").read_text() == (tmp_path / "ev_labels" / "metrics.csv").read_text()
    assert 0.1 < scores["seg"]["metrics"]["dice"]["mean"] < 0.99  # not trivially 0 or 1


def test_manifest_refuses_a_segment_that_is_not_there_before_writing(dicom_dataset, tmp_path):
    root = dicom_dataset
    r = run_cli("manifest", "--images", root / "dicom", "--labels", root / "seg", "--out", tmp_path / "m.json",
                "--label-segment", "Lung")
    assert r.returncode == 2 and "no segment numbered or labelled 'Lung'" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2 and not (tmp_path / "m.json").exists()
    moved = tmp_path / "labels"
    shutil.copytree(root / "seg", moved)
    first = sorted(moved.iterdir())[0]
    shutil.copy(sorted(moved.iterdir())[1], first)  # case 0's label is now case 1's SEG: another series
    r = run_cli("manifest", "--images", root / "dicom", "--labels", moved, "--out", tmp_path / "m2.json")
    assert r.returncode == 2 and "frame of reference" in r.stderr and not (tmp_path / "m2.json").exists()


def test_infer_writes_per_lesion_seg_rtstruct_and_lesion_labels_numbered_as_the_table(cases, tmp_path,
                                                                                  trained_tiny_model):
    import csv

    from monai_pipeline.io.dicom_seg import read_dicom_seg
    from monai_pipeline.io.geometry import sitk_to_xyz_array
    from monai_pipeline.io.rtstruct import read_rtstruct

    folder = cases[0][0]
    r = run_cli("infer", "--model", trained_tiny_model, "--input", folder, "--out", tmp_path / "out", "--device",
                "cpu", "--format", "nifti,dicom-seg,rtstruct,lesion-labels", "--seg-segments", "lesion",
                "--min-score", "0")
    assert r.returncode == 0, r.stderr
    out, cid = tmp_path / "out", folder.name
    _, src = _files_and_source(folder)
    mask = sitk_to_xyz_array(sitk.ReadImage(str(out / f"{cid}.nii.gz")))
    labels = sitk_to_xyz_array(sitk.ReadImage(str(out / f"{cid}_lesions.nii.gz")))
    rows = list(csv.DictReader((out / f"{cid}_lesions.csv").open()))
    assert rows and labels.dtype == np.uint16 and np.array_equal(labels > 0, mask > 0)
    for row in rows:
        k = int(row["lesion"])
        assert (labels == k).sum() == int(row["n_voxels"])
        assert np.array_equal(read_dicom_seg(out / f"{cid}_seg.dcm", src, k), labels == k)
    assert np.array_equal(read_rtstruct(out / f"{cid}_rtstruct.dcm", src), mask)
    for name in ("_seg.dcm", "_rtstruct.dcm"):
        assert dciodvfy_errors(out / f"{cid}{name}") == []
