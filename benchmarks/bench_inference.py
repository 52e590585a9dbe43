"""Full-volume inference: the MONAI spleen-bundle recipe vs. the project's ``infer`` path, same weights.

    python benchmarks/bench_inference.py [--model demo_output/run/model.pt] [--slices 300] [--sweep]

Both paths run in fresh subprocesses on the same machine, one after the other, from reading the NIfTI file to
the mask on disk. Printed: wall time of each, the ratio, Dice between the two masks and of each against the
ground truth, peak resident memory of each, and the work floor (FLOPs spent vs. one pass over the cropped
volume). The last line is the summary the performance issue asks for. ``--sweep`` adds the measurements that
chose the defaults (overlap x window batch, bf16, channels-last) on the network alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    REPO,
    VoxelCounter,
    dice,
    ensure_model,
    flops_per_voxel,
    make_volume,
    peak_rss_gb,
    run_child,
)


def reference(model: Path, image: Path, out: Path) -> dict:
    """The spleen_ct_segmentation inference recipe with this model's spacing and HU window."""
    from monai.data import DataLoader, Dataset, decollate_batch
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    from monai_pipeline.networks import load_model_file

    t0 = time.perf_counter()
    net, blob = load_model_file(model, "cpu")
    pre_cfg = blob["config"]["preprocessing"]
    lo, hi = pre_cfg["hu_window"]
    counter = VoxelCounter(net).eval()
    pre = Compose([
        LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=tuple(pre_cfg["target_spacing"]), mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys="image"),
    ])
    post = Compose([
        Activationsd(keys="pred", softmax=True),
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        AsDiscreted(keys="pred", argmax=True),
        SaveImaged(keys="pred", output_dir=str(out), output_postfix="seg", separate_folder=False, resample=False,
                   output_dtype=np.uint8),
    ])
    inferer = SlidingWindowInferer(roi_size=(96, 96, 96), sw_batch_size=4, overlap=0.5, mode="gaussian")
    loader = DataLoader(Dataset([{"image": str(image)}], transform=pre), batch_size=1, num_workers=0)
    with torch.no_grad():
        for batch in loader:
            batch["pred"] = inferer(batch["image"], counter)
            cropped = int(np.prod(batch["image"].shape[2:]))
            for item in decollate_batch(batch):
                post(item)
    seconds = time.perf_counter() - t0
    fpv = flops_per_voxel(net, (96, 96, 96))
    mask = next(out.glob("*_seg.nii.gz"))
    return {"seconds": seconds, "peak_rss_gb": peak_rss_gb(), "mask": str(mask), "flops": counter.voxels * fpv,
            "floor_flops": cropped * fpv, "network_voxels": cropped}


def project(model: Path, image: Path, out: Path) -> dict:
    """``monai-pipeline infer --no-tta`` as the CLI runs it (otherwise the model's configuration)."""
    from monai_pipeline.inference import Predictor, write_prediction

    t0 = time.perf_counter()
    p = Predictor(model, device="cpu", tta=False)  # like for like: the recipe has no test-time augmentation
    counter = VoxelCounter(p.network)
    p.network = counter
    data = p.load(image)
    pred = p.predict(data, "project")
    write_prediction(pred, out, p.provenance())
    seconds = time.perf_counter() - t0
    fpv = flops_per_voxel(counter.net, p.cfg.inference.roi_size)
    return {"seconds": seconds, "peak_rss_gb": peak_rss_gb(), "mask": str(out / "project.nii.gz"),
            "flops": counter.voxels * fpv, "floor_flops": int(np.prod(data["image"].shape[1:])) * fpv,
            "stages": pred.seconds}


def sweep(model: Path, image: Path) -> None:
    """Network-only timings that chose the defaults (same preprocessed volume for every row)."""
    from contextlib import nullcontext

    from monai.inferers import SlidingWindowInferer

    from monai_pipeline.inference import Predictor

    p = Predictor(model, device="cpu", bf16=False)
    x = p.load(image)["image"][None].as_tensor()
    print(f"\nsweep on the cropped volume {tuple(x.shape[2:])} (network only, seconds):")
    print(f"{'roi':>12} {'overlap':>7} {'sw_batch':>8} {'precision':>9} {'layout':>13} {'s':>7}")
    net = p.network
    for roi in [(96, 96, 64), (96, 96, 96)]:
        for overlap in (0.5, 0.25):
            for swb in (1, 2, 4):
                for bf16 in (False, True):
                    for cl in (False, True):
                        if cl and (not bf16 or swb != 2 or overlap != 0.25):
                            continue
                        if swb != 2 and (not bf16 or overlap != 0.25):
                            continue
                        m = net.to(memory_format=torch.channels_last_3d) if cl else net.to(
                            memory_format=torch.contiguous_format)
                        xi = x.to(memory_format=torch.channels_last_3d) if cl else x
                        inf = SlidingWindowInferer(roi_size=roi, sw_batch_size=swb, overlap=overlap, mode="gaussian")
                        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
                        with torch.no_grad(), ctx:
                            t0 = time.perf_counter()
                            inf(xi, m)
                            dt = time.perf_counter() - t0
                        print(f"{str(roi):>12} {overlap:>7} {swb:>8} {'bf16' if bf16 else 'fp32':>9} "
                              f"{'channels_last' if cl else 'contiguous':>13} {dt:>7.2f}", flush=True)
    net.to(memory_format=torch.contiguous_format)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".cache")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--project-only", action="store_true",
                    help="run only the project's path (e.g. --slices 600 for the memory check)")
    ap.add_argument("--child", choices=("reference", "project"))
    ap.add_argument("--image", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.child:
        fn = reference if a.child == "reference" else project
        a.out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(fn(a.model, a.image, a.out)))
        return
    import SimpleITK as sitk

    from monai_pipeline.io import sitk_to_xyz_array

    model = ensure_model(a.model)
    a.workdir.mkdir(parents=True, exist_ok=True)
    image, label = make_volume(a.workdir, a.slices)
    print(f"machine: {os.cpu_count()} logical CPUs, torch {torch.__version__} threads {torch.get_num_threads()}")
    print(f"volume: {image.name} {sitk.ReadImage(str(image)).GetSize()} at 0.7x0.7x1.25 mm; model {model}")
    if a.project_only:
        with tempfile.TemporaryDirectory() as tmp:
            ours = run_child(Path(__file__), "--child", "project", "--model", str(model), "--image", str(image),
                             "--out", f"{tmp}/ours")
            d = dice(sitk_to_xyz_array(sitk.ReadImage(ours["mask"])), sitk_to_xyz_array(sitk.ReadImage(str(label))))
        print(f"project only: {ours['seconds']:.2f} s, peak RSS {ours['peak_rss_gb']:.2f} GB, Dice vs truth {d:.4f}, "
              f"stages " + ", ".join(f"{k} {v:.2f}" for k, v in ours["stages"].items()))
        return
    with tempfile.TemporaryDirectory() as tmp:
        ref = run_child(Path(__file__), "--child", "reference", "--model", str(model), "--image", str(image),
                        "--out", f"{tmp}/ref")
        ours = run_child(Path(__file__), "--child", "project", "--model", str(model), "--image", str(image),
                         "--out", f"{tmp}/ours")
        truth = sitk_to_xyz_array(sitk.ReadImage(str(label)))
        m_ref = sitk_to_xyz_array(sitk.ReadImage(ref["mask"]))
        m_ours = sitk_to_xyz_array(sitk.ReadImage(ours["mask"]))
    assert m_ref.shape == m_ours.shape == truth.shape
    d_agree, d_ref, d_ours = dice(m_ref, m_ours), dice(m_ref, truth), dice(m_ours, truth)
    speed = ref["seconds"] / ours["seconds"]
    print(f"\n{'path':<28} {'seconds':>8} {'peak RSS GB':>11} {'Dice vs truth':>13} {'GFLOP spent':>11} {'floor':>7}")
    for name, r, d in (("MONAI bundle recipe", ref, d_ref), ("monai-pipeline infer", ours, d_ours)):
        print(f"{name:<28} {r['seconds']:>8.2f} {r['peak_rss_gb']:>11.2f} {d:>13.4f} {r['flops'] / 1e9:>11.0f} "
              f"{r['floor_flops'] / 1e9:>7.0f}")
    print("project stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in ours["stages"].items()))
    print(f"work: recipe spends {ref['flops'] / ref['floor_flops']:.2f}x one pass over its (uncropped) volume; "
          f"the project spends {ours['flops'] / ours['floor_flops']:.2f}x one pass over its cropped volume, "
          f"{ours['flops'] / ref['flops']:.3f}x the recipe's FLOPs")
    print(f"Dice agreement between the two masks: {d_agree:.4f}; project minus recipe Dice vs truth: "
          f"{d_ours - d_ref:+.4f}")
    if a.sweep:
        sweep(model, image)
    print(f"inference speedup vs MONAI bundle recipe: {speed:.2f}x (dice agreement {d_agree:.3f}, "
          f"peak RSS {ours['peak_rss_gb']:.1f} GB vs {ref['peak_rss_gb']:.1f} GB)")


if __name__ == "__main__":
    main()
