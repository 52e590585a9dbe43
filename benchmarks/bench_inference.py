"""Full-volume inference: the MONAI spleen-bundle recipe vs. the project's ``infer`` path, same weights.

    python benchmarks/bench_inference.py [--model demo_output/run/model.pt] [--slices 300] [--sweep]
        [--volumes bench,flipped_rows_ff,prone_2mm,oblique_1mm,left_handed_2p5mm] [--batch 20] [--repeats 3]
        [--project-only]

Per volume, each path runs in a fresh subprocess, one after the other, on the same machine:

* in-process: from loading the model and reading the NIfTI file to the mask on disk (imports excluded);
* whole command: the process's wall time, interpreter start and imports included -- for the project exactly
  what a user types, ``monai-pipeline infer --model M --input CT --out DIR`` with no extra flags (the model's
  own configuration, TTA included when the model keeps it on).

Volumes: the benchmark's own 512 x 512 x 300 chest CT (0.7 x 0.7 x 1.25 mm, head first) and volumes it did not
generate (``common.UNSEEN_VOLUMES``: other seeds, rows flipped and feet first, prone at 0.8 x 0.8 x 2 mm, and --
made after the TTA defaults were chosen on the others -- oblique at 0.6 x 0.6 x 1 mm and left-handed at
0.9 x 0.9 x 2.5 mm).
Printed per volume: seconds, peak RSS, Dice of each mask against the ground truth and the project's difference to
the recipe, both ratios. ``--batch N`` adds throughput: N volumes through one ``infer`` command against the
recipe's per-case time. ``--repeats N`` runs every path N times per volume, interleaved, and compares median
times (this machine's speed drifts by up to a quarter within minutes). ``--sweep`` adds the network-only
measurements that chose the defaults. The last line is the summary the performance issue asks for (the
in-process ratio on the benchmark's own volume).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
    make_unseen,
    make_volume,
    peak_rss_gb,
    run_child,
)


def reference(model: Path, image: Path, out: Path, device: str = "cpu", stitch_device: str | None = None) -> dict:
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

    from monai_pipeline.model_file import load_model_file

    t0 = time.perf_counter()
    net, blob = load_model_file(model, device)
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
    inferer = SlidingWindowInferer(roi_size=(96, 96, 96), sw_batch_size=4, overlap=0.5, mode="gaussian",
                                   sw_device=device, device=stitch_device or device)
    loader = DataLoader(Dataset([{"image": str(image)}], transform=pre), batch_size=1, num_workers=0)
    with torch.no_grad():
        for batch in loader:
            batch["pred"] = inferer(batch["image"].to(device), counter).cpu()
            cropped = int(np.prod(batch["image"].shape[2:]))
            for item in decollate_batch(batch):
                post(item)
    seconds = time.perf_counter() - t0
    fpv = flops_per_voxel(net, (96, 96, 96))
    mask = next(out.glob("*_seg.nii.gz"))
    return {"seconds": seconds, "peak_rss_gb": peak_rss_gb(), "mask": str(mask), "flops": counter.voxels * fpv,
            "floor_flops": cropped * fpv, "network_voxels": cropped}


def project(model: Path, image: Path, out: Path, device: str = "cpu", stitch_device: str | None = None,
            tta: bool | None = None) -> dict:
    """What ``monai-pipeline infer`` runs for one input, in-process: the model's own configuration (``tta``
    overrides its TTA setting, as ``--tta/--no-tta`` do), in a process whose allocator keeps freed memory, as
    ``infer`` sets it up (:func:`monai_pipeline.runtime.keep_freed_memory`)."""
    from monai_pipeline.inference import Predictor, write_prediction
    from monai_pipeline.runtime import keep_freed_memory

    keep_freed_memory()
    t0 = time.perf_counter()
    p = Predictor(model, device=device, stitch_device=stitch_device, inference={"tta": tta})
    counter = VoxelCounter(p.network)
    p.network = counter
    data = p.load(image)
    pred = p.predict(data, "project")
    write_prediction(pred, out, p.provenance())
    seconds = time.perf_counter() - t0
    fpv = flops_per_voxel(counter.net, p.cfg.inference.roi_size)
    peak_gpu = torch.cuda.max_memory_allocated() / 1024 ** 3 if p.device.type == "cuda" else 0.0
    return {"seconds": seconds, "peak_rss_gb": peak_rss_gb(), "peak_gpu_gb": peak_gpu,
            "mask": str(out / "project.nii.gz"),
            "flops": counter.voxels * fpv, "floor_flops": int(np.prod(data["image"].shape[1:])) * fpv,
            "stages": pred.seconds}


def sweep(model: Path, image: Path) -> None:
    """Network-only timings that chose the defaults (same preprocessed volume for every row)."""
    from contextlib import nullcontext

    from monai.inferers import SlidingWindowInferer

    from monai_pipeline.inference import Predictor

    p = Predictor(model, device="cpu", inference={"bf16": False})
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


def whole_command(model: Path, image: Path | list[Path], out: Path, *extra: str) -> dict:
    """``monai-pipeline infer --model M --input CT... --out DIR`` as a user types it (plus ``extra`` flags);
    wall time of the process."""
    images = image if isinstance(image, list) else [image]
    exe = Path(sys.executable).with_name("monai-pipeline")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "monai_pipeline.cli"]
    t0 = time.perf_counter()
    r = subprocess.run([*command, "infer", "--model", str(model), "--input", *map(str, images), "--out", str(out),
                        "--no-progress", *extra], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"monai-pipeline infer failed:\n{r.stderr[-3000:]}")
    return {"seconds": seconds, "masks": [str(out / (p.name.split(".")[0] + ".nii.gz")) for p in images]}


def truth_dice(mask: str | Path, label: Path) -> float:
    import SimpleITK as sitk

    from monai_pipeline.io import sitk_to_xyz_array

    return dice(sitk_to_xyz_array(sitk.ReadImage(str(mask))), sitk_to_xyz_array(sitk.ReadImage(str(label))))


def median_of(runs: list[dict]) -> dict:
    """The first run's result with its times (``seconds``, ``process_s``) replaced by the medians over ``runs``."""
    from statistics import median

    out = dict(runs[0])
    for key in ("seconds", "process_s"):
        if key in out:
            out[key] = median(r[key] for r in runs)
    return out


def compare(model: Path, name: str, image: Path, label: Path, tmp: Path, device: str = "cpu",
            repeats: int = 1) -> dict:
    """Recipe and project on one volume, in-process and as whole commands; with ``repeats`` > 1 each path runs
    that many times, the paths interleaved (so a slow minute of the machine hits all of them), and the median
    times are compared."""
    script = Path(__file__)
    runs: dict[str, list[dict]] = {"ref": [], "ours": [], "no_tta": [], "cmd": []}
    for i in range(repeats):
        runs["ref"].append(run_child(script, "--child", "reference", "--model", str(model), "--image", str(image),
                                     "--out", str(tmp / f"{name}_ref{i}"), "--device", device))
        runs["ours"].append(run_child(script, "--child", "project", "--model", str(model), "--image", str(image),
                                      "--out", str(tmp / f"{name}_ours{i}"), "--device", device))
        runs["no_tta"].append(run_child(script, "--child", "project-no-tta", "--model", str(model), "--image",
                                        str(image), "--out", str(tmp / f"{name}_notta{i}"), "--device", device))
        runs["cmd"].append(whole_command(model, image, tmp / f"{name}_cmd{i}"))
    ref, ours, no_tta, cmd = (median_of(runs[k]) for k in ("ref", "ours", "no_tta", "cmd"))
    d_ref, d_ours, d_cmd, d_no_tta = (truth_dice(ref["mask"], label), truth_dice(ours["mask"], label),
                                      truth_dice(cmd["masks"][0], label), truth_dice(no_tta["mask"], label))
    return {"name": name, "ref": ref, "ours": ours, "cmd": cmd, "no_tta": no_tta, "d_ref": d_ref, "d_ours": d_ours,
            "d_cmd": d_cmd, "d_no_tta": d_no_tta, "in_process": ref["seconds"] / ours["seconds"],
            "whole": ref["process_s"] / cmd["seconds"], "in_process_no_tta": ref["seconds"] / no_tta["seconds"],
            "repeats": repeats}


def print_comparison(r: dict) -> None:
    ref, ours, cmd = r["ref"], r["ours"], r["cmd"]
    if r["repeats"] > 1:
        print(f"\n[{r['name']}] times: medians of {r['repeats']} interleaved runs of each path")
    print(f"\n[{r['name']}] {'path':<34} {'in-process s':>12} {'whole cmd s':>11} {'peak RSS GB':>11} "
          f"{'Dice vs truth':>13} {'- recipe':>8}")
    print(f"[{r['name']}] {'MONAI bundle recipe':<34} {ref['seconds']:>12.2f} {ref['process_s']:>11.2f} "
          f"{ref['peak_rss_gb']:>11.2f} {r['d_ref']:>13.4f} {'':>8}")
    print(f"[{r['name']}] {'monai-pipeline infer (defaults)':<34} {ours['seconds']:>12.2f} {cmd['seconds']:>11.2f} "
          f"{ours['peak_rss_gb']:>11.2f} {r['d_ours']:>13.4f} {r['d_ours'] - r['d_ref']:>+8.4f}")
    nt = r["no_tta"]
    print(f"[{r['name']}] {'monai-pipeline infer --no-tta':<34} {nt['seconds']:>12.2f} {'':>11} "
          f"{nt['peak_rss_gb']:>11.2f} {r['d_no_tta']:>13.4f} {r['d_no_tta'] - r['d_ref']:>+8.4f}")
    if abs(r["d_cmd"] - r["d_ours"]) > 1e-9:
        print(f"[{r['name']}] note: the whole command's mask scores {r['d_cmd']:.4f}")
    print(f"[{r['name']}] project stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in ours["stages"].items()))
    print(f"[{r['name']}] work: recipe {ref['flops'] / ref['floor_flops']:.2f}x one pass over its (uncropped) volume; "
          f"project {ours['flops'] / ours['floor_flops']:.2f}x one pass over its cropped volume, "
          f"{ours['flops'] / ref['flops']:.3f}x the recipe's FLOPs")
    print(f"[{r['name']}] speedup: in-process {r['in_process']:.2f}x (--no-tta {r['in_process_no_tta']:.2f}x), "
          f"whole command {r['whole']:.2f}x"
          + (f"; project peak GPU memory {ours['peak_gpu_gb']:.2f} GB" if ours["peak_gpu_gb"] else ""))


def batch(model: Path, n: int, workdir: Path, tmp: Path) -> None:
    """Throughput: ``n`` volumes (512 x 512 x 120, different seeds and orientations) through one ``infer``
    command, against the recipe's per-case whole-command time (median of 3 of them, times n)."""
    from statistics import median

    import SimpleITK as sitk

    from monai_pipeline.io import sitk_to_xyz_array

    orientations = ("axial_hf", "flipped_rows", "prone", "axial_ff")
    vols = [make_volume(workdir, 120, seed=5000 + i, orientation=orientations[i % 4], name=f"batch_{i:02d}")
            for i in range(n)]
    script = Path(__file__)
    per_case = median(run_child(script, "--child", "reference", "--model", str(model), "--image", str(img),
                                "--out", str(tmp / f"batch_ref_{i}"))["process_s"]
                 for i, (img, _) in enumerate(vols[:3]))
    cmd = whole_command(model, [img for img, _ in vols], tmp / "batch_cmd")
    dices = [truth_dice(m, lab) for m, (_, lab) in zip(cmd["masks"], vols, strict=True)]
    ran = json.loads((tmp / "batch_cmd" / "summary.json").read_text())
    print(f"\nbatch: {n} volumes of 512 x 512 x 120 through one `monai-pipeline infer` ({ran['processes']} "
          f"process(es) x {ran['threads_per_process']} thread(s), --workers auto): {cmd['seconds']:.1f} s "
          f"({3600 * n / cmd['seconds']:.0f} cases/hour, mean Dice vs truth {np.mean(dices):.4f}); recipe "
          f"{per_case:.1f} s per case as a command ({3600 / per_case:.0f} cases/hour): "
          f"{per_case * n / cmd['seconds']:.2f}x")
    single = whole_command(model, [img for img, _ in vols], tmp / "batch_cmd_1", "--workers", "1")
    same = sum(np.array_equal(sitk_to_xyz_array(sitk.ReadImage(a)), sitk_to_xyz_array(sitk.ReadImage(b)))
               for a, b in zip(cmd["masks"], single["masks"], strict=True))
    print(f"batch with --workers 1 (one process, every thread): {single['seconds']:.1f} s "
          f"({per_case * n / single['seconds']:.2f}x the recipe); --workers auto is "
          f"{single['seconds'] / cmd['seconds']:.2f}x faster; identical masks: {same} of {n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".cache")
    ap.add_argument("--volumes", default="bench,flipped_rows_ff,prone_2mm,oblique_1mm,left_handed_2p5mm",
                    help="bench and/or names from common.UNSEEN_VOLUMES, comma separated")
    ap.add_argument("--batch", type=int, default=0, help="also measure N volumes through one infer command")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run each path this many times per volume (interleaved) and compare the median times")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--project-only", action="store_true",
                    help="run only the project's path (e.g. --slices 600 for the memory check)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both paths)")
    ap.add_argument("--stitch-device", help="where the full-volume output is accumulated (e.g. cpu with --device cuda)")
    ap.add_argument("--child", choices=("reference", "project", "project-no-tta"))
    ap.add_argument("--image", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.child:
        a.out.mkdir(parents=True, exist_ok=True)
        if a.child == "reference":
            result = reference(a.model, a.image, a.out, a.device, a.stitch_device)
        else:
            result = project(a.model, a.image, a.out, a.device, a.stitch_device,
                             tta=False if a.child == "project-no-tta" else None)
        print(json.dumps(result))
        return
    import SimpleITK as sitk

    model = ensure_model(a.model)
    a.workdir.mkdir(parents=True, exist_ok=True)
    image, label = make_volume(a.workdir, a.slices)
    print(f"machine: {os.cpu_count()} logical CPUs, torch {torch.__version__} threads {torch.get_num_threads()}")
    print(f"volume: {image.name} {sitk.ReadImage(str(image)).GetSize()} at 0.7x0.7x1.25 mm; model {model}")
    if a.project_only:
        with tempfile.TemporaryDirectory() as tmp:
            ours = run_child(Path(__file__), "--child", "project", "--model", str(model), "--image", str(image),
                             "--out", f"{tmp}/ours", "--device", a.device,
                             *(["--stitch-device", a.stitch_device] if a.stitch_device else []))
            d = truth_dice(ours["mask"], label)
        print(f"project only: {ours['seconds']:.2f} s, peak RSS {ours['peak_rss_gb']:.2f} GB, peak GPU memory "
              f"{ours['peak_gpu_gb']:.2f} GB, Dice vs truth {d:.4f}, "
              f"stages " + ", ".join(f"{k} {v:.2f}" for k, v in ours["stages"].items()))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [v.strip() for v in a.volumes.split(",") if v.strip()]:
            img, lab = (image, label) if name == "bench" else make_unseen(a.workdir, name)
            results.append(compare(model, name, img, lab, Path(tmp), a.device, a.repeats))
            print_comparison(results[-1])
        if a.batch:
            batch(model, a.batch, a.workdir, Path(tmp))
    if a.sweep:
        sweep(model, image)
    print("\nsummary: " + "; ".join(f"{r['name']} {r['in_process']:.2f}x in-process / {r['whole']:.2f}x whole command, "
                                    f"Dice {r['d_ours']:.3f} vs recipe {r['d_ref']:.3f} (--no-tta "
                                    f"{r['in_process_no_tta']:.2f}x, Dice {r['d_no_tta']:.3f})" for r in results))
    r = results[0]
    print(f"inference speedup vs MONAI bundle recipe: {r['in_process']:.2f}x (in-process on {r['name']}; whole "
          f"command {r['whole']:.2f}x; Dice vs truth {r['d_ours']:.3f} vs {r['d_ref']:.3f}; peak RSS "
          f"{r['ours']['peak_rss_gb']:.1f} GB vs {r['ref']['peak_rss_gb']:.1f} GB)")


if __name__ == "__main__":
    main()
