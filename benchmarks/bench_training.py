"""Training throughput: a plain MONAI spleen-recipe loop vs. the project's ``train`` on the same data.

    python benchmarks/bench_training.py [--cases 10] [--epochs 6]

Same synthetic cases, network, patch size and patches per volume. The plain recipe is the tutorial's:
``CacheDataset`` of the deterministic transforms, ``RandCropByPosNegLabeld`` computing foreground/background
indices on every call, a ``DataLoader`` with worker processes, float32, MetaTensors tracked through the random
transforms, a hand-written loop. The project's path is ``monai_pipeline.training.train`` as the CLI runs it
(cached indices, lesion or pos/neg sampling from the configuration, ``set_track_meta(False)`` after the cached
part, bf16 autocast where the CPU supports it, ignite engines). Throughput is patches per second over the
epochs after the first (cache building is excluded from both). The last line prints the ratio.
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


def plain_recipe(manifest: Path, cfg, epochs: int, workers: int) -> float:
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
    net = build_network(cfg.network)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    patches, t_start = 0, None
    for epoch in range(epochs):
        if epoch == 1:
            t_start, patches = time.perf_counter(), 0
        net.train()
        for batch in loader:
            opt.zero_grad()
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            patches += batch["image"].shape[0]
    return patches / (time.perf_counter() - t_start)


def project(manifest: Path, cfg, epochs: int, run: Path) -> float:
    from monai_pipeline.data.manifest import load_manifest
    from monai_pipeline.training import train

    cfg = cfg.merged({"training": {"val_interval": 10 ** 6}})
    train(manifest, run, cfg, epochs=epochs, device="cpu", progress=False)
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))[1:]
    n_train = len(load_manifest(manifest, "training"))
    per_epoch = n_train * cfg.patch.num_samples
    return per_epoch * len(rows) / sum(float(r["seconds"]) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain recipe")
    a = ap.parse_args()
    from monai_pipeline.data.synth_dataset import synthesize
    from monai_pipeline.demo import DEMO_SYNTH, demo_config

    cfg = demo_config()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthesize(Path(tmp) / "data", a.cases, seed=5, cfg=DEMO_SYNTH, n_test=0, n_val=0, progress=False)
        print(f"{a.cases} synthetic cases, patch {cfg.patch.size} x {cfg.patch.num_samples} per volume, "
              f"batch {cfg.training.batch_size}, network {cfg.network.name}, {a.epochs} epochs "
              f"(first excluded), torch threads {torch.get_num_threads()}")
        plain = plain_recipe(manifest, cfg, a.epochs, a.workers)
        print(f"plain MONAI spleen-recipe loop: {plain:.1f} patches/s", flush=True)
        ours = project(manifest, cfg, a.epochs, Path(tmp) / "run")
        print(f"monai-pipeline train:           {ours:.1f} patches/s")
    print(f"training throughput vs plain MONAI recipe: {ours / plain:.2f}x ({ours:.1f} vs {plain:.1f} patches/s)")


if __name__ == "__main__":
    main()
