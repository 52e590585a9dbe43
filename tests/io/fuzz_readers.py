"""Bounded fuzzing of the readers (run by ``test_fuzz_readers.py`` in a subprocess with a hard time limit).

NIfTI: header fields of a valid file are mutated (dims, pixdim, datatype, vox_offset, scaling, qform/sform codes
and values) and raw header bytes are flipped. DICOM: tags of one slice of a valid series are mutated (position,
orientation, spacing, size, rescale, bits) and raw bytes are flipped. For every file, :func:`read_ct` must
either raise :class:`InputError` (one clean message) or return a volume that an independent reader confirms:
nibabel's shape, values and affine for NIfTI; pydicom's positions and rescaled pixels for DICOM. Any other
exception, any disagreement ("silent garbage") or a read slower than the limit fails.

Usage: ``python -m tests.io.fuzz_readers WORKDIR [EXAMPLES]``.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import time
import warnings
from pathlib import Path

import numpy as np

READ_LIMIT_S = 10.0
warnings.filterwarnings("ignore")


def _read(path: Path):
    from monai_pipeline.errors import InputError
    from monai_pipeline.io import read_ct

    t0 = time.perf_counter()
    try:
        vol = read_ct(path)
    except InputError as err:
        vol = err
    dt = time.perf_counter() - t0
    assert dt < READ_LIMIT_S, f"{path.name}: read took {dt:.1f} s"
    if isinstance(vol, InputError):
        assert "\n" not in str(vol) and str(path.name) in str(vol) or str(path) in str(vol), str(vol)
        return None
    return vol


# -- NIfTI -----------------------------------------------------------------------------------------------------------
def _base_nifti(folder: Path, kind: str) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 400, (12, 10, 6)).astype(np.int16 if kind == "int" else np.float32)
    aff = np.array([[-0.8, 0, 0, 30.0], [0, -0.9, 0, 20.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(arr, aff)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=1)
    path = folder / f"base_{kind}.nii"
    nib.save(img, str(path))
    return path


FIELDS = {  # header field: (offset, struct format) in the 348-byte NIfTI-1 header
    "dim1": (42, "<h"), "dim2": (44, "<h"), "dim3": (46, "<h"), "dim0": (40, "<h"),
    "datatype": (70, "<h"), "bitpix": (72, "<h"),
    "pixdim1": (80, "<f"), "pixdim2": (84, "<f"), "pixdim3": (88, "<f"), "qfac": (76, "<f"),
    "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"), "sform_code": (254, "<h"),
    "quatern_b": (256, "<f"), "qoffset_x": (268, "<f"), "srow_x0": (280, "<f"), "srow_x3": (292, "<f"),
    "srow_y1": (300, "<f"),
}


def check_nifti(data: bytes, name: str, folder: Path) -> str:
    import nibabel as nib

    path = folder / name
    path.write_bytes(data)
    vol = _read(path)
    if vol is None:
        return "refused"
    import SimpleITK as sitk

    from monai_pipeline.io.geometry import Geometry

    try:
        ref = nib.load(str(path))
        ref_arr = np.asanyarray(ref.dataobj).astype(np.float64)
    except Exception as err:  # noqa: BLE001
        raise AssertionError(f"{name}: accepted, but nibabel cannot read it ({err})") from err
    ours = sitk.GetArrayFromImage(vol.image).transpose(2, 1, 0).astype(np.float64)
    assert ours.shape == ref_arr.shape[:3], f"{name}: shape {ours.shape} vs nibabel {ref_arr.shape}"
    assert np.allclose(ours, ref_arr, rtol=1e-4, atol=1e-3), f"{name}: voxel values differ from nibabel's"
    hdr = ref.header
    if int(hdr["sform_code"]) > 0 or int(hdr["qform_code"]) > 0:
        got = Geometry.from_sitk(vol.image).ras_affine()
        assert np.allclose(got, ref.affine, atol=1e-3), f"{name}: affine differs from nibabel's\n{got}\n{ref.affine}"
    return "accepted"


def fuzz_nifti(folder: Path, examples: int) -> dict:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    bases = {k: _base_nifti(folder, k).read_bytes() for k in ("int", "float")}
    outcomes: dict[str, int] = {}
    values = st.one_of(st.integers(-3, 3), st.integers(-40000, 40000), st.sampled_from([0.0, -1.0, 1e30, float("nan"),
                                                                                         float("inf"), 0.5, 2.0]))

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(kind=st.sampled_from(sorted(bases)), field=st.sampled_from(sorted(FIELDS)), value=values,
           flips=st.lists(st.tuples(st.integers(0, 347), st.integers(0, 255)), max_size=2),
           gz=st.booleans())
    def run(kind, field, value, flips, gz):
        import gzip

        data = bytearray(bases[kind])
        off, fmt = FIELDS[field]
        try:
            data[off:off + struct.calcsize(fmt)] = struct.pack(fmt, int(value) if fmt == "<h" and np.isfinite(value)
                                                               else value if fmt != "<h" else 0)
        except (struct.error, OverflowError, ValueError):
            pass
        for pos, byte in flips:
            data[pos] = byte
        name = f"f_{kind}_{field}.nii" + (".gz" if gz else "")
        blob = gzip.compress(bytes(data)) if gz else bytes(data)
        res = check_nifti(blob, name, folder)
        outcomes[res] = outcomes.get(res, 0) + 1

    run()
    return outcomes


# -- DICOM -----------------------------------------------------------------------------------------------------------
def _base_series(folder: Path) -> Path:
    import SimpleITK as sitk

    from monai_pipeline.io.dicom_writer import write_ct_series

    arr = np.full((5, 16, 16), -1000, np.int16)
    arr[:, 4:12, 4:12] = 40
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 2.0))
    write_ct_series(img, folder / "base_series", file_names=[f"s{k}.dcm" for k in range(5)])
    return folder / "base_series"


TAGS = {"ImagePositionPatient": "DS", "ImageOrientationPatient": "DS", "PixelSpacing": "DS", "Rows": "US",
        "Columns": "US", "RescaleSlope": "DS", "RescaleIntercept": "DS", "BitsAllocated": "US", "SliceThickness": "DS",
        "SeriesInstanceUID": "UI", "Modality": "CS"}


def check_series(folder: Path) -> str:
    import pydicom
    import SimpleITK as sitk

    vol = _read(folder)
    if vol is None:
        return "refused"
    # independent check: pydicom's positions along the normal and rescaled pixels, slice by slice
    dss = [pydicom.dcmread(str(p)) for p in sorted(folder.glob("*.dcm"))]
    # a file whose SeriesInstanceUID was changed is another series: the reader uses the largest CT series
    # (and warns, listing the others), so only the chosen series' files are compared
    dss = [d for d in dss if str(d.get("SeriesInstanceUID", "")) == vol.series_instance_uid]
    iop = np.asarray([float(v) for v in dss[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: float(np.dot(np.asarray([float(v) for v in d.ImagePositionPatient]), normal)))
    ours = sitk.GetArrayFromImage(vol.image).astype(np.float64)  # (z, y, x)
    assert ours.shape[0] == len(dss), "slice count differs from the files"
    for k, d in enumerate(dss):
        ref = d.pixel_array * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
        assert np.allclose(ours[k], ref, atol=1e-3), f"slice {k}: values differ from pydicom's"
        pos = np.asarray([float(v) for v in d.ImagePositionPatient])
        got = np.asarray(vol.image.TransformIndexToPhysicalPoint((0, 0, k)))
        assert np.allclose(got, pos, atol=1e-2), f"slice {k}: position {got} vs header {pos}"
    return "accepted"


def fuzz_dicom(folder: Path, examples: int) -> dict:
    import pydicom
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from pydicom import config
    from pydicom.dataelem import DataElement

    base = _base_series(folder)
    outcomes: dict[str, int] = {}
    raw_values = st.sampled_from(["", "abc", "1\\2", "0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0", "-5", "0", "1e9", "nan",
                                  "0.5\\0.5", "1\\0\\0\\0\\1\\0", "12", "7"])

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(tag=st.sampled_from(sorted(TAGS)), value=raw_values, which=st.integers(0, 4), delete=st.booleans(),
           flips=st.lists(st.tuples(st.integers(132, 900), st.integers(0, 255)), max_size=2))
    def run(tag, value, which, delete, flips):
        work = folder / "series"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
        target = work / f"s{which}.dcm"
        config.settings.writing_validation_mode = config.IGNORE
        ds = pydicom.dcmread(str(target))
        if delete and tag in ds:
            delattr(ds, tag)
        else:
            vr = TAGS[tag] if TAGS[tag] not in ("DS", "US") else "LO"  # any text, valid or not
            ds[pydicom.datadict.tag_for_keyword(tag)] = DataElement(pydicom.datadict.tag_for_keyword(tag), vr, value)
        ds.save_as(str(target))
        if flips:
            data = bytearray(target.read_bytes())
            for pos, byte in flips:
                if pos < len(data):
                    data[pos] = byte
            target.write_bytes(bytes(data))
        res = check_series(work)
        outcomes[res] = outcomes.get(res, 0) + 1

    run()
    return outcomes


def main() -> int:
    folder = Path(sys.argv[1])
    examples = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    nifti = fuzz_nifti(folder, examples)
    dicom = fuzz_dicom(folder, examples)
    print(f"nifti {nifti}; dicom {dicom}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
