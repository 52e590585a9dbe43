"""Writing a CT volume as a real DICOM CT Image series (pydicom), one file per slice.

Used for the synthetic data set, the LIDC-shaped studies and tests. The files follow the CT Image IOD (checked
with dicom3tools' ``dciodvfy`` in the tests: no errors): SOP class CT Image Storage,
unique UIDs, ImagePositionPatient/ImageOrientationPatient from the volume's geometry, PixelSpacing as
[row spacing, column spacing], unsigned 16-bit stored values with RescaleIntercept -1024 and slope 1.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from monai_pipeline.io.geometry import Geometry, sitk_to_xyz_array
from monai_pipeline.io.writer import SYNTHETIC_MARK, atomic_path

RESCALE_INTERCEPT = -1024


def write_ct_series(
    image: sitk.Image,
    folder: str | Path,
    *,
    patient_id: str = "SYNTH",
    series_uid: str | None = None,
    study_uid: str | None = None,
    sop_uids: Sequence[str] | None = None,
    instance_order: str = "descending",
    file_names: Sequence[str] | None = None,
    modality: str = "CT",
    rng: np.random.Generator | None = None,
    manufacturer: str = SYNTHETIC_MARK,
) -> list[Path]:
    """Write ``image`` (HU) as one DICOM file per slice along its third axis; return the paths in slice order.

    ``instance_order`` "descending" numbers the last slice 1 (so InstanceNumber runs against position, as in
    many scanners' head-to-feet exports). File names are random unless ``file_names`` is given, so readers
    cannot rely on them. The geometry must be right-handed (third direction = row x column direction).
    """
    geom = Geometry.from_sitk(image)
    d = geom.direction_matrix
    if not np.allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2], atol=1e-6):
        raise ValueError("DICOM series need a right-handed direction (slice normal = row x column)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = rng or np.random.default_rng()
    arr = sitk_to_xyz_array(image)
    stored = (np.clip(np.rint(arr), RESCALE_INTERCEPT, 65535 + RESCALE_INTERCEPT) - RESCALE_INTERCEPT).astype(np.uint16)
    nz = geom.size[2]
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    now = datetime.datetime(2000, 1, 1, 12, 0, 0)
    paths = []
    for k in range(nz):
        pos = np.asarray(geom.origin) + d[:, 2] * geom.spacing[2] * k
        meta = FileMetaDataset()
        sop = sop_uids[k] if sop_uids is not None else generate_uid()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        name = file_names[k] if file_names is not None else f"IM{rng.integers(10**9):09d}_{k}.dcm"
        ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.PatientID = patient_id
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientSex = "O"
        ds.PatientBirthDate = ""  # Type 2: present, empty (no identity in synthetic data)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "HFS"  # General Series, Type 2C (required for CT); geometry is in patient space anyway
        ds.BodyPartExamined = "CHEST"  # unpaired: Laterality (Type 2C) absent
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = manufacturer
        ds.SeriesDescription = "synthetic chest CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = (nz - k) if instance_order == "descending" else (k + 1)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{geom.spacing[1]:.6f}", f"{geom.spacing[0]:.6f}"]
        ds.SliceThickness = f"{geom.spacing[2]:.6f}"
        ds.SliceLocation = f"{float(pos[2]):.6f}"
        ds.PositionReferenceIndicator = ""
        ds.KVP = "120"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = geom.size[1], geom.size[0]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = str(RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows = y, columns = x
        path = folder / name
        with atomic_path(path) as tmp:
            ds.save_as(str(tmp), enforce_file_format=True)
        paths.append(path)
    return paths


def read_positions(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """ImagePositionPatient of each file (pydicom, headers only)."""
    return [np.asarray([float(v) for v in pydicom.dcmread(str(p), stop_before_pixels=True).ImagePositionPatient])
            for p in paths]
