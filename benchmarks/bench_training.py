"""Training throughput: a plain MONAI spleen-recipe loop vs. the project's ``train`` on the same data.

    python benchmarks/bench_training.py [--cases 10] [--epochs 6] [--device cpu|cuda]
    python benchmarks/bench_training.py --time-to-dice 0.6 [--cases 16] [--max-minutes 10] [--device cuda]

Same synthetic cases, network, patch size and patches per volume. The plain recipe is the tutorial's:
``CacheDataset`` of the deterministic transforms, ``RandCropByPosNegLabeld`` computing foreground/background
indices on every call, a ``DataLoader`` with worker processes, float32, MetaTensors tracked through the random
transforms, a hand-written loop. The project's path is ``monai_pipeline.training.train`` as the CLI runs it
(cached indices, lesion or pos/neg sampling from the configuration, ``set_track_meta(False)`` after the cached
part, bf16 autocast where the CPU supports it, ignite engines). Throughput is patches per second over the
epochs after the first (cache building is excluded from both). The last line prints the ratio.

``--time-to-dice D``: time to quality instead. Both paths train the same network on the same demo-style cases
(the demo's synthetic generator; the first two cases held out for validation) and are validated every
``--val-every`` epochs with the same sliding-window inferer and MONAI's ``DiceMetric``; printed is the training
time (validation excluded from both) until the validation Dice first reaches D, each capped at
``--max-minutes``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402


def plain_recipe(manifest: Path, cfg, epochs: int, workers: int, device: str = "cpu",
                 target_dice: float | None = None, val_every: int = 2, max_seconds: float = float("inf")) -> float:
    from monai.data import CacheDataset, DataLoader, load_decathlon_datalist
    from monai.losses import DiceCELoss
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        Orientationd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandShiftIntensityd,
        ScaleIntensityRanged,
        Spacingd,
    )

    from monai_pipeline.networks import build_network

    pre, p = cfg.preprocessing, cfg.patch
    files = load_decathlon_datalist(str(manifest), data_list_key="training")
    tf = Compose([
        LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
        Orientationd(keys=["image", "label"], axcodes="RAS"),
        Spacingd(keys=["image", "label"], pixdim=pre.target_spacing, mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys="image", a_min=pre.hu_window[0], a_max=pre.hu_window[1], b_min=0.0, b_max=1.0,
                             clip=True),
        CropForegroundd(keys=["image", "label"], source_key="image"),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=p.size, pos=1,
                               neg=1, num_samples=p.num_samples, image_key="image", image_threshold=0),
        RandFlipd(keys=["image", "label"], spatial_axis=[0], prob=0.1),
        RandFlipd(keys=["image", "label"], spatial_axis=[1], prob=0.1),
        RandFlipd(keys=["image", "label"], spatial_axis=[2], prob=0.1),
        RandRotate90d(keys=["image", "label"], prob=0.1, max_k=3),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        EnsureTyped(keys=["image", "label"]),
    ])
    ds = CacheDataset(files, tf, cache_rate=1.0, num_workers=None, progress=False)
    loader = DataLoader(ds, batch_size=cfg.training.batch_size, shuffle=True, num_workers=workers)
    net = build_network(cfg.network).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    if target_dice is not None:
        val_files = load_decathlon_datalist(str(manifest), data_list_key="validation")
        val_tf = Compose([t for t in tf.transforms if not t.__class__.__name__.startswith("Rand")])
        val_ds = CacheDataset(val_files, val_tf, cache_rate=1.0, num_workers=None, progress=False)
    patches, t_start, trained = 0, None, 0.0
    for epoch in range(epochs):
        if epoch == 1:
            t_start, patches = time.perf_counter(), 0
        net.train()
        t0 = time.perf_counter()
        for batch in loader:
            opt.zero_grad()
            loss = loss_fn(net(batch["image"].to(device)), batch["label"].to(device))
            loss.backward()
            opt.step()
            patches += batch["image"].shape[0]
        trained += time.perf_counter() - t0
        if target_dice is not None and (epoch + 1) % val_every == 0:
            dice = validate(net, val_ds, cfg, device)
            print(f"  plain recipe epoch {epoch + 1}: {trained:.1f} s trained, validation Dice {dice:.3f}", flush=True)
            if dice >= target_dice:
                return trained
            if trained > max_seconds:
                return float("inf")
    if target_dice is not None:
        return float("inf")
    return patches / (time.perf_counter() - t_start)


def validate(net, val_ds, cfg, device: str) -> float:
    """Mean Dice (foreground) of ``net`` over ``val_ds`` with the configured sliding window (MONAI DiceMetric)."""
    from monai.metrics import DiceMetric

    from monai_pipeline.inferers import build_sliding_window

    inferer = build_sliding_window(cfg, sw_device=device, device=device)
    metric = DiceMetric(include_background=False)
    net.eval()
    with torch.no_grad():
        for item in val_ds:
            x = item["image"][None].to(device)
            pred = inferer(x, net).argmax(1, keepdim=True)
            truth = item["label"][None].to(device)
            metric(torch.nn.functional.one_hot(pred[:, 0].long(), 2).permute(0, 4, 1, 2, 3),
                   torch.nn.functional.one_hot(truth[:, 0].long(), 2).permute(0, 4, 1, 2, 3))
    net.train()
    return float(metric.aggregate().item())


def project(manifest: Path, cfg, epochs: int, run: Path, device: str = "cpu") -> float:
    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.training import train

    cfg = cfg.merged({"training": {"val_interval": 10 ** 6}})
    train(manifest, run, cfg, epochs=epochs, device=device, progress=False)
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))[1:]
    n_train = len(load_manifest(manifest, "training"))
    per_epoch = n_train * cfg.patch.num_samples
    return per_epoch * len(rows) / sum(float(r["seconds"]) for r in rows)


def project_time_to_dice(manifest: Path, cfg, run: Path, device: str, target: float, val_every: int,
                         max_epochs: int) -> float:
    """Training seconds (validation excluded) of ``monai-pipeline train`` until its logged validation Dice first
    reaches ``target``; inf when it does not within ``max_epochs``."""
    from monai_pipeline.training import train

    cfg = cfg.merged({"training": {"val_interval": val_every, "epochs": max_epochs}})
    train(manifest, run, cfg, epochs=max_epochs, device=device, progress=False)
    trained = 0.0
    with open(run / "log.csv") as fh:
        for row in csv.DictReader(fh):
            trained += float(row["seconds"])
            if row["val_mean_dice"]:
                print(f"  project epoch {row['epoch']}: {trained:.1f} s trained, validation Dice "
                      f"{float(row['val_mean_dice']):.3f}", flush=True)
                if float(row["val_mean_dice"]) >= target:
                    return trained
    return float("inf")


def time_to_dice(a, cfg) -> None:
    from monai_pipeline.data.synth_dataset import synthesize
    from monai_pipeline.demo import DEMO_SYNTH

    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthesize(Path(tmp) / "data", a.cases, seed=11, cfg=DEMO_SYNTH, n_test=0, n_val=2, progress=False)
        print(f"time to validation Dice {a.time_to_dice} on {a.cases} demo-style cases (2 held out), device "
              f"{a.device}, validation every {a.val_every} epochs, cap {a.max_minutes} min", flush=True)
        t0 = time.perf_counter()
        ours = project_time_to_dice(manifest, cfg, Path(tmp) / "run", a.device, a.time_to_dice, a.val_every,
                                    a.max_epochs)
        print(f"monai-pipeline train: {ours:.1f} s ({time.perf_counter() - t0:.0f} s wall)", flush=True)
        plain = plain_recipe(manifest, cfg, a.max_epochs, a.workers, a.device, a.time_to_dice, a.val_every,
                             a.max_minutes * 60)
        print(f"plain MONAI recipe:   {plain:.1f} s", flush=True)
    print(f"time to validation Dice {a.time_to_dice} vs plain MONAI recipe: {plain / ours:.2f}x "
          f"({ours:.1f} s vs {plain:.1f} s of training)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain recipe")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--time-to-dice", type=float, help="measure time to this validation Dice instead")
    ap.add_argument("--val-every", type=int, default=2)
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--max-minutes", type=float, default=10.0)
    a = ap.parse_args()
    from monai_pipeline.data.synth_dataset import synthesize
    from monai_pipeline.demo import DEMO_SYNTH, demo_config

    cfg = demo_config()
    if a.time_to_dice is not None:
        time_to_dice(a, cfg)
        return
    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthesize(Path(tmp) / "data", a.cases, seed=5, cfg=DEMO_SYNTH, n_test=0, n_val=0, progress=False)
        print(f"{a.cases} synthetic cases, patch {cfg.patch.size} x {cfg.patch.num_samples} per volume, "
              f"batch {cfg.training.batch_size}, network {cfg.network.name}, {a.epochs} epochs "
              f"(first excluded), torch threads {torch.get_num_threads()}")
        plain = plain_recipe(manifest, cfg, a.epochs, a.workers, a.device)
        print(f"plain MONAI spleen-recipe loop: {plain:.1f} patches/s", flush=True)
        ours = project(manifest, cfg, a.epochs, Path(tmp) / "run", a.device)
        print(f"monai-pipeline train:           {ours:.1f} patches/s")
    print(f"training throughput vs plain MONAI recipe: {ours / plain:.2f}x ({ours:.1f} vs {plain:.1f} patches/s)")


if __name__ == "__main__":
    main()
