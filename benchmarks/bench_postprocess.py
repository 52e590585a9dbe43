"""Post-processing and evaluation of a 512 x 512 x 300 mask (the issue asks for under 1 s each).

    python benchmarks/bench_postprocess.py

Uses the benchmark volume's nodule label; the "prediction" is the label shifted by two voxels plus a few
spurious specks, so every stage (small-component removal, hole filling, lesion table, surface distances,
lesion matching) has work to do. Prints seconds per stage, and scipy's whole-volume equivalents for scale.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
from common import REPO, make_volume  # noqa: E402
from scipy import ndimage  # noqa: E402


def timed(fn, *args, repeat: int = 3, **kw):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    import SimpleITK as sitk

    from monai_pipeline.config import load_config
    from monai_pipeline.evaluation import case_metrics
    from monai_pipeline.io import Geometry, sitk_to_xyz_array
    from monai_pipeline.postprocess import lesion_table, postprocess_array

    work = REPO / "benchmarks" / ".cache"
    work.mkdir(parents=True, exist_ok=True)
    image, label = make_volume(work, 300)
    lab_img = sitk.ReadImage(str(label))
    geom = Geometry.from_sitk(lab_img)
    ref = sitk_to_xyz_array(lab_img) > 0
    hu = sitk_to_xyz_array(sitk.ReadImage(str(image)))
    pred = np.roll(ref, 2, axis=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y, z = rng.integers(0, 510), rng.integers(0, 510), rng.integers(0, 298)
        pred[x:x + 2, y:y + 2, z:z + 2] = True
    print(f"mask {ref.shape}, {int(ref.sum())} reference voxels, spacing {tuple(round(s, 3) for s in geom.spacing)} mm")
    post = load_config({"postprocess": {"steps": {"lung_filter": {"enabled": False}}}}).postprocess
    t_post, cleaned = timed(postprocess_array, pred, geom.spacing, post)
    t_les, rows = timed(lesion_table, cleaned, geom, hu)
    t_eval, m = timed(case_metrics, cleaned, ref, geom.spacing)
    t_fill_scipy, _ = timed(ndimage.binary_fill_holes, pred, repeat=1)
    t_edt_scipy, _ = timed(ndimage.distance_transform_edt, ~pred, sampling=geom.spacing, repeat=1)
    print(f"post-processing (remove < 10 mm3, fill holes): {t_post:.3f} s")
    print(f"lesion table ({len(rows)} lesions):                {t_les:.3f} s")
    print(f"evaluation (Dice..HD95, ASSD, lesions):        {t_eval:.3f} s   "
          f"(Dice {m['dice']:.3f}, HD95 {m['hd95_mm']:.2f} mm)")
    print(f"for scale, scipy on the whole volume: binary_fill_holes {t_fill_scipy:.2f} s, "
          f"distance_transform_edt {t_edt_scipy:.2f} s")
    print(f"post-processing {t_post + t_les:.2f} s and evaluation {t_eval:.2f} s per 512x512x300 mask "
          f"(target: under 1 s each)")


if __name__ == "__main__":
    main()
