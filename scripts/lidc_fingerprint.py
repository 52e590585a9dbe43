"""Write ``configs/lidc_fingerprint.json``: the planner's fingerprint of the real LIDC-IDRI, from what is known
without its images.

Measured from the 1,035 CT reads of TCIA's XML archive (``../shared/lidc/tcia-lidc-xml.tar.xz``): the slice step
of each of the 1,018 series (from the z positions of its marks, :func:`monai_pipeline.lidc.synth.infer_step`),
the nodules >= 3 mm each reader outlined per scan, their volumes (outline areas x slice step, in pixels) and the
share of nodules read as calcified. Not in the XML, so taken from the literature and marked ``assumed`` in the
file: the pixel spacing (LIDC: 0.46-0.98 mm, Armato et al. 2011; median taken as 0.70 mm, which also turns the
nodule volumes into mm), the lung-crop extent (adult lungs; it only bounds the patch, which GPU memory decides)
and the foreground HU range (ground glass to calcified nodules).

Run: python scripts/lidc_fingerprint.py [--xml ARCHIVE] [--out configs/lidc_fingerprint.json]
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import numpy as np

from monai_pipeline.lidc.synth import infer_step
from monai_pipeline.lidc.xml import parse_read

REPO = Path(__file__).resolve().parents[1]
ASSUMED_PIXEL_MM = 0.70
ASSUMED = {
    "pixel_spacing_mm": "0.70 (LIDC range 0.46-0.98 mm, Armato et al., Med Phys 38:915, 2011)",
    "lung_extent_mm": "[280, 190, 250]: adult lungs, right to left, front to back, apex to base",
    "foreground_hu": "p00_5 -850 (ground-glass nodules), p99_5 900 (calcified nodules)",
}


def _area_px(points: np.ndarray) -> float:
    """Shoelace area (pixels) of an outline."""
    if len(points) < 3:
        return 0.0
    x, y = points[:, 0].astype(float), points[:, 1].astype(float)
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--xml", default=str(REPO.parent / "shared" / "lidc" / "tcia-lidc-xml.tar.xz"))
    ap.add_argument("--out", default=str(REPO / "configs" / "lidc_fingerprint.json"))
    a = ap.parse_args()
    steps, per_scan, diameters, calcified, seen = [], [], [], [], set()
    with tarfile.open(a.xml) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            read = parse_read(tar.extractfile(member))
            if read is None or read.series_uid in seen:
                continue
            seen.add(read.series_uid)
            z = [r.z for n in read.nodule_reads for r in n.rois] + \
                [nn.z for s in read.sessions for nn in s.non_nodules]
            step = infer_step(np.asarray(z)) if z else None
            if step is not None:
                steps.append(step)
            big = [n for n in read.nodule_reads if not n.is_small]
            per_scan.append(len(big) / max(1, len(read.sessions)))
            for n in big:
                area = sum(_area_px(r.points) for r in n.rois if r.inclusion)
                volume = area * ASSUMED_PIXEL_MM ** 2 * (step or 2.5)
                if volume > 0:
                    diameters.append((6 * volume / np.pi) ** (1 / 3))
                if n.characteristics.get("calcification"):
                    calcified.append(n.characteristics["calcification"] != 6)
    steps_a, d = np.asarray(steps), np.asarray(diameters)
    z_med, z_p10, z_p90 = (float(np.median(steps_a)), float(np.percentile(steps_a, 10)),
                           float(np.percentile(steps_a, 90)))
    summary = {
        "n_cases": len(seen),
        "spacing_mm": {"median": [ASSUMED_PIXEL_MM, ASSUMED_PIXEL_MM, z_med], "p10": [0.6, 0.6, z_p10],
                       "p90": [0.8, 0.8, z_p90]},
        "shape": {"median": [512, 512, int(round(340 / z_med))]},
        "lung_extent_mm": {"median": [280.0, 190.0, 250.0], "p90": [320.0, 220.0, 290.0]},
        "foreground_hu": {"mean": -150.0, "std": 350.0, "p00_5": -850.0, "p99_5": 900.0},
        "lesions": {"n": int(d.size), "per_case": float(np.mean(per_scan)),
                    "diameter_mm": {"min": float(d.min()), "median": float(np.median(d)),
                                    "p95": float(np.percentile(d, 95)), "max": float(d.max())}},
    }
    fp = {"format": "monai-pipeline-fingerprint/1", "source": "TCIA LIDC-IDRI XML reads (measured) + literature "
          "(assumed)", "assumed": ASSUMED, "measured": {
              "series": len(seen), "slice_step_mm": {"median": z_med, "p10": z_p10, "p90": z_p90,
                                                     "min": float(steps_a.min()), "max": float(steps_a.max())},
              "nodule_reads_3mm_or_more": int(d.size), "calcified_share": float(np.mean(calcified))},
          "summary": summary}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(fp, indent=1) + "\n")
    print(json.dumps(fp["measured"], indent=1))
    print(json.dumps(summary["lesions"], indent=1))


if __name__ == "__main__":
    main()
