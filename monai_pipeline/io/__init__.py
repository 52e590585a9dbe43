"""CT input/output: SimpleITK reading (NIfTI, NRRD, MHA, DICOM file or series), geometry, atomic writing."""

from monai_pipeline.io.geometry import Geometry, sitk_to_xyz_array, xyz_array_to_sitk
from monai_pipeline.io.reader import CTVolume, ReadOptions, SimpleITKReader, read_ct, read_label, volume_meta
from monai_pipeline.io.writer import atomic_path, atomic_write, atomic_write_text, write_image, write_mask

__all__ = [
    "CTVolume", "Geometry", "ReadOptions", "SimpleITKReader", "atomic_path", "atomic_write",
    "atomic_write_text", "read_ct", "read_label", "sitk_to_xyz_array", "volume_meta", "write_image", "write_mask",
    "xyz_array_to_sitk",
]
