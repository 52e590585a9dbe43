"""Shared fixtures: tiny synthetic volumes with non-identity spacing and direction, pydicom's real CT files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pydicom_test_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name))


@pytest.fixture(scope="session")
def pydicom_dir() -> Path:
    return pydicom_test_file("CT_small.dcm").parent


@pytest.fixture(scope="session")
def tiny_synth_cfg():
    from monai_pipeline.data.synthetic import SynthConfig

    return SynthConfig(matrix=96, spacing_xy=(0.7, 0.9), spacing_z=(1.5, 2.5), extent_z_mm=60.0, n_nodules=(2, 3),
                       diameter_mm=(6.0, 16.0))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_synth_cfg):
    """6 tiny NIfTI cases with a manifest (4 training, 1 validation, 1 test)."""
    from monai_pipeline.data.synth_dataset import synthesize

    out = tmp_path_factory.mktemp("tiny")
    synthesize(out, 6, seed=7, fmt="nifti", cfg=tiny_synth_cfg, n_test=1, n_val=1, progress=False)
    return out


def physical_points_lps(nifti_path: Path, mask: np.ndarray | None = None) -> np.ndarray:
    """LPS mm positions of the nonzero voxels of a NIfTI file, computed with nibabel's affine (independent
    of SimpleITK): nibabel's array axes are (i, j, k) and its affine maps to RAS."""
    import nibabel as nib

    img = nib.load(str(nifti_path))
    data = np.asarray(img.dataobj) if mask is None else mask
    idx = np.argwhere(data > 0)
    ras = (img.affine[:3, :3] @ idx.T).T + img.affine[:3, 3]
    return ras * np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="session")
def trained_tiny_model(tmp_path_factory, tiny_dataset) -> Path:
    """A tiny UNet trained for a few epochs on :func:`tiny_dataset`: its masks are not empty, so comparisons of
    entry points compare real decisions (not an all-background output). It keeps the better of its two
    validations (``training.keep: best``): after 6 epochs the final weights mark nothing on some phantoms."""
    from monai_pipeline.config import load_config
    from monai_pipeline.training import train
    from tests.helpers import TINY_OVERLAY

    cfg = load_config(TINY_OVERLAY, {"training": {"epochs": 6, "val_interval": 3, "keep": "best"}})
    return train(tiny_dataset / "manifest.json", tmp_path_factory.mktemp("trained") / "run", cfg, device="cpu",
                 progress=False)
