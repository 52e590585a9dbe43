"""A catalogue of bad inputs: DICOM, NIfTI/NRRD/MHA, labels, manifests, models, output paths, special files.

Each case runs the CLI (``monai_pipeline.cli.main``, in-process for speed) and asserts: exit code 2 (1 for a
batch that went on), exactly one error line, naming the offending file, no traceback, and no new file in the
output folder (for batches: the good cases were written).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom import config as dcm_config
from pydicom.dataelem import DataElement

from tests.helpers import tiny_model_file

pytestmark = pytest.mark.slow  # end to end: subprocesses, training or real CT


@dataclass
class Case:
    argv: list[str]
    name: str  # a name the error line must contain
    out: Path | None = None  # folder that must stay empty (or not exist)
    code: int = 2
    batch_done: tuple[str, ...] = ()  # for batches: cases that must have been written


def _ct(shape=(48, 44, 12), spacing=(0.8, 0.8, 2.5), fill=-1000.0, dtype=np.int16) -> sitk.Image:
    """A small chest-like CT: air around a soft-tissue body with air-filled 'lungs'."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = ((x - shape[0] / 2) ** 2 / (0.4 * shape[0]) ** 2 + (y - shape[1] / 2) ** 2 / (0.4 * shape[1]) ** 2) < 1
    lung = ((x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2) < (0.15 * min(shape[:2])) ** 2
    arr = np.full(shape, fill, np.float64)
    arr[body] = 40.0
    arr[lung] = -850.0
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0).astype(dtype))
    img.SetSpacing(spacing)
    img.SetOrigin((-20.0, -18.0, 100.0))
    return img


def _series(folder: Path, n: int = 8) -> list[Path]:
    from monai_pipeline.io.dicom_writer import write_ct_series

    img = _ct((40, 40, n))
    write_ct_series(img, folder, file_names=[f"s{k:02d}.dcm" for k in range(n)])
    return sorted(folder.glob("*.dcm"))


def _edit(path: Path, fn: Callable[[pydicom.Dataset], None]) -> None:
    old = dcm_config.settings.writing_validation_mode
    dcm_config.settings.writing_validation_mode = dcm_config.IGNORE
    try:
        ds = pydicom.dcmread(path)
        fn(ds)
        ds.save_as(path)
    finally:
        dcm_config.settings.writing_validation_mode = old


def _set(keyword_tag: int, vr: str, value) -> Callable[[pydicom.Dataset], None]:
    def fn(ds):
        ds[keyword_tag] = DataElement(keyword_tag, vr, value)
    return fn


IPP, IOP, PS = 0x00200032, 0x00200037, 0x00280030


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    good = root / "good.nii.gz"
    sitk.WriteImage(_ct(), str(good))
    model = tiny_model_file(root / "model.pt")
    return {"root": root, "good": good, "model": model}


def _convert(inp: Path, out_dir: Path) -> list[str]:
    return ["convert", "--input", str(inp), "--out", str(out_dir / "x.nii.gz")]


# -- builders: each makes one bad input under `d` and returns the Case ----------------------------------------------
def dicom_case(edit_index: int | None, fn, name_from_folder: bool = True):
    def build(d: Path, env) -> Case:
        files = _series(d / "series")
        if edit_index is not None:
            _edit(files[edit_index], fn)
        else:
            fn(files)
        return Case(_convert(d / "series", d / "out"), "series", d / "out")
    return build


def _drop_slice(files):
    files[3].unlink()


def _duplicate(files):
    shutil.copy(files[2], files[2].with_name("dup.dcm"))
    _edit(files[2].with_name("dup.dcm"), lambda ds: setattr(ds, "SOPInstanceUID", pydicom.uid.generate_uid()))


def _tilt(files):
    for k, f in enumerate(files):
        _edit(f, lambda ds, k=k: setattr(ds, "ImagePositionPatient", [float(ds.ImagePositionPatient[0]),
                                                                         float(ds.ImagePositionPatient[1]) + 0.5 * k,
                                                                         float(ds.ImagePositionPatient[2])]))


def _mr(files):
    for f in files:
        _edit(f, lambda ds: setattr(ds, "Modality", "MR"))


def _rows(ds):
    arr = ds.pixel_array[::2, ::2].copy()
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()


def _no_pixels(ds):
    del ds.PixelData


SERIES_CASES = {
    "dicom_ipp_empty": dicom_case(3, _set(IPP, "DS", "")),
    "dicom_ipp_not_numeric": dicom_case(3, _set(IPP, "LO", "abc\\1\\2")),
    "dicom_ipp_two_values": dicom_case(3, _set(IPP, "DS", "1\\2")),
    "dicom_ipp_missing": dicom_case(3, lambda ds: delattr(ds, "ImagePositionPatient")),
    "dicom_iop_all_zero": dicom_case(0, _set(IOP, "DS", "0\\0\\0\\0\\0\\0")),
    "dicom_iop_not_orthogonal": dicom_case(0, _set(IOP, "DS", "1\\0\\0\\1\\0\\0")),
    "dicom_iop_missing": dicom_case(2, lambda ds: delattr(ds, "ImageOrientationPatient")),
    "dicom_iop_mixed": dicom_case(5, _set(IOP, "DS", "1\\0\\0\\0\\0\\-1")),
    "dicom_pixel_spacing_differs": dicom_case(4, _set(PS, "DS", "0.9\\0.9")),
    "dicom_pixel_spacing_zero": dicom_case(4, _set(PS, "DS", "0\\0.8")),
    "dicom_pixel_spacing_missing_in_one": dicom_case(4, lambda ds: delattr(ds, "PixelSpacing")),
    "dicom_rows_columns_differ": dicom_case(6, _rows),
    "dicom_rows_missing": dicom_case(6, lambda ds: delattr(ds, "Rows")),
    "dicom_duplicate_position": dicom_case(None, _duplicate),
    "dicom_missing_slice": dicom_case(None, _drop_slice),
    "dicom_gantry_tilt": dicom_case(None, _tilt),
    "dicom_not_ct": dicom_case(None, _mr),
    "dicom_no_pixel_data_in_one": dicom_case(2, _no_pixels),
}


def _file_case(make: Callable[[Path], Path], name: str | None = None, command: str = "convert"):
    def build(d: Path, env) -> Case:
        p = make(d)
        if command == "convert":
            return Case(_convert(p, d / "out"), name or p.name, d / "out")
        return Case(["infer", "--model", str(env["model"]), "--input", str(p), "--out", str(d / "out"),
                     "--device", "cpu"], name or p.name, d / "out")
    return build


def _write(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


def _truncated(d: Path, name: str, keep: float = 0.5) -> Path:
    src = d / ("full_" + name)
    sitk.WriteImage(_ct(), str(src))
    data = src.read_bytes()
    src.unlink()
    return _write(d, name, data[: int(len(data) * keep)])


def _float_ct(d: Path, name: str, poke) -> Path:
    img = _ct(dtype=np.float32)
    arr = sitk.GetArrayFromImage(img)
    poke(arr)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(d / name))
    return d / name


def _image(d: Path, name: str, arr: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(d / name))
    return d / name


def _sheared_nifti(d: Path) -> Path:
    import nibabel as nib

    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    aff[0, 1] = 0.4  # shear: not a voxel grid
    img = nib.Nifti1Image(np.full((20, 20, 6), -1000, np.int16), aff)
    img.header.set_qform(np.diag([0.8, 0.8, 2.5, 1.0]), code=1)
    img.header.set_sform(aff, code=1)
    nib.save(img, str(d / "sheared.nii.gz"))
    return d / "sheared.nii.gz"


def _single_dicom_without_position(d: Path) -> Path:
    files = _series(d / "series", n=2)
    f = d / "single.dcm"
    shutil.copy(files[0], f)
    _edit(f, lambda ds: (delattr(ds, "ImagePositionPatient"), delattr(ds, "ImageOrientationPatient")))
    return f


def _dicom_garbage(d: Path) -> Path:
    return _write(d, "garbage.dcm", b"\0" * 128 + b"DICM" + os.urandom(300))


def _dicom_truncated(d: Path) -> Path:
    files = _series(d / "series", n=2)
    data = files[0].read_bytes()
    return _write(d, "cut.dcm", data[: len(data) // 3])


def _fifo(d: Path, name: str) -> Path:
    os.mkfifo(d / name)
    return d / name


def _loop(d: Path) -> Path:
    os.symlink(d / "b", d / "a")
    os.symlink(d / "a", d / "b")
    return d / "a"


def _broken_link(d: Path) -> Path:
    os.symlink(d / "nowhere.nii.gz", d / "link.nii.gz")
    return d / "link.nii.gz"


def _mhd_missing_raw(d: Path) -> Path:
    sitk.WriteImage(_ct(), str(d / "vol.mhd"))
    (d / "vol.raw").unlink() if (d / "vol.raw").exists() else [p.unlink() for p in d.glob("vol.*raw")]
    return d / "vol.mhd"


def _mhd_short_raw(d: Path) -> Path:
    sitk.WriteImage(_ct(), str(d / "short.mhd"), False)
    raw = next(d.glob("short.*raw"))
    raw.write_bytes(raw.read_bytes()[:1000])
    return d / "short.mhd"


def _bad_nrrd(d: Path) -> Path:
    return _write(d, "bad.nrrd", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10\nencoding: raw\n\n" + b"\0" * 100)


def _subfolder_series(d: Path) -> Path:
    _series(d / "top" / "patient" / "study")
    return d / "top"


def _empty_folder(d: Path) -> Path:
    (d / "empty").mkdir()
    (d / "empty" / "notes.txt").write_text("not dicom")
    return d / "empty"


FILE_CASES = {
    "nifti_truncated_gz": _file_case(lambda d: _truncated(d, "cut.nii.gz")),
    "nifti_truncated_plain": _file_case(lambda d: _truncated(d, "cut.nii", 0.6)),
    "nifti_random_bytes": _file_case(lambda d: _write(d, "random.nii.gz", os.urandom(2000))),
    "nifti_empty_file": _file_case(lambda d: _write(d, "empty.nii.gz", b"")),
    "nifti_2d": _file_case(lambda d: _image(d, "flat.nii.gz", np.full((30, 40), -1000, np.int16))),
    "nifti_4d": _file_case(lambda d: _image(d, "fourd.nii.gz", np.full((2, 6, 20, 20), -1000, np.int16))),
    "nifti_rgb": _file_case(lambda d: (sitk.WriteImage(sitk.Compose([_ct()] * 3), str(d / "rgb.nii.gz")),
                                       d / "rgb.nii.gz")[1]),
    "nifti_nan_voxels": _file_case(
        lambda d: _float_ct(d, "nan.nii.gz", lambda a: a.__setitem__((0, 0, slice(0, 5)), np.nan))),
    "nifti_inf_voxels": _file_case(lambda d: _float_ct(d, "inf.nii.gz", lambda a: a.__setitem__((1, 1, 1), np.inf))),
    "nifti_not_hu_0_1": _file_case(
        lambda d: _image(d, "unit.nii.gz", np.random.default_rng(0).random((8, 20, 20)).astype(np.float32))),
    "nifti_values_out_of_range": _file_case(
        lambda d: _float_ct(d, "huge.nii.gz", lambda a: a.__setitem__((2, 2, 2), 1e7))),
    "nifti_sheared_sform": _file_case(_sheared_nifti),
    "mha_named_pipe": _file_case(lambda d: _fifo(d, "scan.mha")),
    "dcm_named_pipe": _file_case(lambda d: _fifo(d, "scan.dcm")),
    "symlink_loop": _file_case(_loop, "a"),
    "broken_symlink": _file_case(_broken_link),
    "missing_file": _file_case(lambda d: d / "nothere.nii.gz"),
    "unsupported_extension": _file_case(lambda d: _write(d, "scan.png", b"\x89PNG....")),
    "mhd_missing_raw": _file_case(_mhd_missing_raw),
    "mhd_short_raw": _file_case(_mhd_short_raw),
    "nrrd_bad_header": _file_case(_bad_nrrd),
    "dicom_single_without_position": _file_case(_single_dicom_without_position),
    "dicom_garbage_after_magic": _file_case(_dicom_garbage),
    "dicom_truncated_file": _file_case(_dicom_truncated),
    "dicom_series_one_folder_down": _file_case(_subfolder_series, "patient"),
    "dicom_folder_without_dicom": _file_case(_empty_folder),
    "infer_all_air_volume": _file_case(lambda d: _image(d, "air.nii.gz", np.full((12, 40, 40), -1000, np.int16)),
                                       command="infer"),
    "infer_nan_volume": _file_case(lambda d: _float_ct(d, "nan.nii.gz", lambda a: a.__setitem__((0, 0, 0), np.nan)),
                                   command="infer"),
    "infer_not_hu": _file_case(lambda d: _image(d, "unit.nii.gz", np.zeros((12, 40, 40), np.float32)), command="infer"),
}


# -- labels and evaluation -----------------------------------------------------------------------------------------
def _eval_case(label_arr_fn=None, pred_arr_fn=None, name="label", other_grid=False, missing_label=False):
    def build(d: Path, env) -> Case:
        ct = _ct()
        (d / "data").mkdir()
        (d / "pred").mkdir()
        sitk.WriteImage(ct, str(d / "data" / "c1.nii.gz"))
        base = sitk.GetArrayFromImage(ct) * 0

        def write(arr, path, ref=ct):
            img = sitk.GetImageFromArray(arr)
            img.CopyInformation(ref)
            sitk.WriteImage(img, str(path))

        lab = label_arr_fn(base.copy()) if label_arr_fn else base.astype(np.uint8)
        if not missing_label:
            write(lab, d / "data" / "c1_label.nii.gz")
        pred = pred_arr_fn(base.copy()) if pred_arr_fn else base.astype(np.uint8)
        if other_grid:
            small = _ct((20, 20, 6))
            write(np.zeros((6, 20, 20), np.uint8), d / "pred" / "c1.nii.gz", small)
        else:
            write(pred, d / "pred" / "c1.nii.gz")
        (d / "data" / "manifest.json").write_text(json.dumps(
            {"training": [], "validation": [], "test": [{"image": "c1.nii.gz", "label": "c1_label.nii.gz",
                                                         "case_id": "c1"}]}))
        return Case(["evaluate", "--pred", str(d / "pred"), "--manifest", str(d / "data" / "manifest.json"),
                     "--out", str(d / "out")], name, d / "out")
    return build


def _vals(*values):
    def fn(a):
        a = a.astype(np.uint8)
        for i, v in enumerate(values):
            a[i, i, i] = v
        return a
    return fn


EVAL_CASES = {
    "label_values_0_1_2": _eval_case(_vals(1, 2)),
    "label_values_0_255": _eval_case(_vals(255)),
    "label_float_probabilities": _eval_case(lambda a: (a + 0.3).astype(np.float32)),
    "label_negative": _eval_case(lambda a: (a - 1).astype(np.int16)),
    "label_nan": _eval_case(lambda a: np.where(a == 0, np.nan, 0).astype(np.float32)),
    "prediction_values_0_2": _eval_case(pred_arr_fn=_vals(2), name="c1.nii.gz"),
    "prediction_float_map": _eval_case(pred_arr_fn=lambda a: (a + 0.5).astype(np.float32), name="c1.nii.gz"),
    "prediction_other_grid": _eval_case(other_grid=True, name="c1.nii.gz"),
    "label_file_missing": _eval_case(missing_label=True, name="c1_label"),
}


# -- manifests, models, configs, output paths ------------------------------------------------------------------------
def _manifest_case(content, command="train"):
    def build(d: Path, env) -> Case:
        m = d / "m.json"
        m.write_text(content if isinstance(content, str) else json.dumps(content))
        shutil.copy(env["good"], d / "good.nii.gz")
        if command == "train":
            argv = ["train", "--manifest", str(m), "--out", str(d / "out"), "--device", "cpu", "--epochs", "1"]
        elif command == "check":
            argv = ["check", "--manifest", str(m)]
        else:
            argv = ["infer", "--model", str(env["model"]), "--manifest", str(m), "--out", str(d / "out"), "--device",
                    "cpu"]
        return Case(argv, "m.json", d / "out")
    return build


def _lab(d_good="good.nii.gz"):
    return {"image": d_good, "label": "lab.nii.gz"}


MANIFEST_CASES = {
    "manifest_not_json": _manifest_case("{not json"),
    "manifest_entry_string": _manifest_case({"training": ["good.nii.gz"]}),
    "manifest_entry_number": _manifest_case({"training": [42]}),
    "manifest_entry_without_image": _manifest_case({"training": [{"label": "x.nii.gz"}]}),
    "manifest_no_sections": _manifest_case({"cases": []}),
    "manifest_top_level_list": _manifest_case([{"image": "good.nii.gz"}]),
    "manifest_image_missing_train": _manifest_case({"training": [{"image": "gone.nii.gz", "label": "gone.nii.gz",
                                                                  "case_id": "a", "fold": 0},
                                                                 {"image": "good.nii.gz", "label": "good.nii.gz",
                                                                  "case_id": "b", "fold": 1}]}),
    "manifest_duplicate_case_ids_check": _manifest_case({"training": [{"image": "good.nii.gz", "case_id": "a"},
                                                                      {"image": "good.nii.gz",
                                                                       "case_id": "a"}]}, "check"),
    "manifest_patient_in_two_folds_check": _manifest_case(
        {"training": [{"image": "good.nii.gz", "case_id": "a", "patient_id": "p", "fold": 0},
                      {"image": "good.nii.gz", "case_id": "b", "patient_id": "p", "fold": 1}]}, "check"),
    "manifest_infer_entry_string": _manifest_case({"test": ["good.nii.gz"]}, "infer"),
    "manifest_missing_file": lambda d, env: Case(["train", "--manifest", str(d / "none.json"), "--out", str(d / "out")],
                                                 "none.json", d / "out"),
}


def _model_case(make, name):
    def build(d: Path, env) -> Case:
        m = make(d)
        return Case(["infer", "--model", str(m), "--input", str(env["good"]), "--out", str(d / "out"), "--device",
                     "cpu"],
                    name, d / "out")
    return build


def _torch_save(d: Path, obj, name: str) -> Path:
    import torch

    torch.save(obj, d / name)
    return d / name


def _misfit_model(d: Path) -> Path:
    import torch

    from tests.helpers import TINY_NET

    path = tiny_model_file(d / "misfit.pt")
    blob = torch.load(path, weights_only=True)
    blob["network"] = {**TINY_NET, "kwargs": {**TINY_NET["kwargs"], "channels": [4, 8, 16]}}
    torch.save(blob, path)
    return path


MODEL_CASES = {
    "model_random_bytes": _model_case(lambda d: _write(d, "model.pt", os.urandom(500)), "model.pt"),
    "model_other_dict": _model_case(lambda d: _torch_save(d, {"weights": 1}, "other.pt"), "other.pt"),
    "model_weights_do_not_fit": _model_case(_misfit_model, "misfit.pt"),
    "model_folder_without_cv_json": _model_case(lambda d: (d / "cvdir").mkdir() or d / "cvdir", "cvdir"),
    "model_missing": _model_case(lambda d: d / "nomodel.pt", "nomodel.pt"),
}


def _config_case(text: str):
    def build(d: Path, env) -> Case:
        (d / "c.yaml").write_text(text)
        (d / "m.json").write_text(json.dumps({"training": [{"image": str(env["good"]), "label": str(env["good"])}]}))
        return Case(["train", "--manifest", str(d / "m.json"), "--config", str(d / "c.yaml"), "--out", str(d / "out")],
                    "c.yaml", d / "out")
    return build


def _out_case(argv_fn, name):
    def build(d: Path, env) -> Case:
        return Case(argv_fn(d, env), name, None)
    return build


def _existing_file(d: Path, name: str) -> Path:
    (d / name).write_text("x")
    return d / name


OUTPUT_CASES = {
    "config_misspelt_key": _config_case("inference: {overlapp: 0.5}\n"),
    "config_invalid_yaml": _config_case("inference: [1, 2\n"),
    "config_not_mapping": _config_case("- a\n- b\n"),
    "config_out_of_range": _config_case("inference: {overlap: 1.5}\n"),
    "infer_out_is_a_file": _out_case(lambda d, env: ["infer", "--model", str(env["model"]), "--input", str(env["good"]),
                                                     "--out", str(_existing_file(d, "outfile"))], "outfile"),
    "infer_out_parent_is_a_file": _out_case(lambda d, env: ["infer", "--model", str(env["model"]), "--input",
                                                            str(env["good"]), "--out",
                                                            str(_existing_file(d, "parent") / "sub")], "parent"),
    "convert_out_unknown_extension": _out_case(lambda d, env: ["convert", "--input", str(env["good"]), "--out",
                                                               str(d / "out.xyz")], "out.xyz"),
    "convert_out_is_a_folder": _out_case(lambda d, env: ["convert", "--input", str(env["good"]), "--out",
                                                         str((d / "dir.nii.gz").mkdir() or d / "dir.nii.gz")],
                                         "dir.nii.gz"),
    "evaluate_out_is_a_file": _out_case(lambda d, env: ["evaluate", "--pred", str(d), "--manifest", str(env["good"]),
                                                        "--out", str(_existing_file(d, "report"))], "report"),
    "manifest_out_not_json": _out_case(lambda d, env: ["manifest", "--images", str(d), "--out", str(d / "m.txt")],
                                       "m.txt"),
    "export_bundle_not_a_bundle": _out_case(lambda d, env: ["export-bundle", "--model", str(env["model"]), "--bundle",
                                                            str((d / "notabundle").mkdir() or d / "notabundle")],
                                            "notabundle"),
    "postprocess_without_image_for_lung_filter": _out_case(
        lambda d, env: ["postprocess", "--input", str(env["good"]), "--out", str(d / "out")], "good.nii.gz"),
    "postprocess_image_count_differs": _out_case(
        lambda d, env: ["postprocess", "--input", str(env["good"]), "--image", str(env["good"]), str(env["good"]),
                        "--out", str(d / "out")], "--image"),
    "synth_out_is_a_file": _out_case(lambda d, env: ["synth", "--out", str(_existing_file(d, "s")), "--cases", "1"],
                                     "s"),
    "lidc_input_missing": _out_case(lambda d, env: ["lidc-convert", "--input", str(d / "nolidc"), "--out",
                                                    str(d / "o")], "nolidc"),
}


# -- batches: the good cases are written, the bad one is reported, exit 1 ------------------------------------------
def _batch(make_bad):
    def build(d: Path, env) -> Case:
        bad = make_bad(d)
        return Case(["infer", "--model", str(env["model"]), "--input", str(env["good"]), str(bad), "--out",
                     str(d / "out"), "--device", "cpu", "--no-progress"], bad.name, None, code=1, batch_done=("good",))
    return build


BATCH_CASES = {
    "batch_second_input_missing": _batch(lambda d: d / "gone.nii.gz"),
    "batch_second_input_nan": _batch(lambda d: _float_ct(d, "nan.nii.gz", lambda a: a.__setitem__((0, 0, 0), np.nan))),
    "batch_second_input_truncated": _batch(lambda d: _truncated(d, "cut.nii.gz")),
}

CATALOGUE = {**SERIES_CASES, **FILE_CASES, **EVAL_CASES, **MANIFEST_CASES, **MODEL_CASES, **OUTPUT_CASES, **BATCH_CASES}


def test_catalogue_is_large():
    assert len(CATALOGUE) >= 60


@pytest.mark.parametrize("key", sorted(CATALOGUE))
def test_bad_input(key, env, tmp_path, capsys):
    from monai_pipeline.cli import main

    case = CATALOGUE[key](tmp_path, env)
    before = set(tmp_path.rglob("*"))
    code = main(case.argv)
    err = capsys.readouterr().err
    assert code == case.code, f"{key}: exit {code}, stderr: {err}"
    assert "Traceback" not in err
    if case.code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1, f"{key}: {err}"
        assert lines[0].startswith("monai-pipeline: error:") and case.name in lines[0], f"{key}: {lines[0]}"
        new = set(tmp_path.rglob("*")) - before
        assert not new, f"{key}: wrote {sorted(map(str, new))}"
    else:
        out = Path(case.argv[case.argv.index("--out") + 1])
        for cid in case.batch_done:
            assert (out / f"{cid}.nii.gz").is_file()
        fail = (out / "failures.csv").read_text()
        assert case.name.split(".")[0] in fail
        assert f"failed: {case.name.split('.')[0]}" in err
