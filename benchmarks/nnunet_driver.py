"""nnU-Net v2 under a wall-clock budget: the half of ``bench_nnunet.py`` that runs in nnU-Net's own environment.

    nnUNet_preprocessed=... nnUNet_results=... python nnunet_driver.py train --dataset NAME --plans PLANS \
        [--configuration 3d_fullres] --budget-min 40 [--iterations 50] [--val-iterations 10] [--device cpu]
    python nnunet_driver.py predict --model FOLDER --configuration C --images DIR --out DIR [--no-mirroring]

This file imports nnU-Net and torch only (not monai_pipeline): nnU-Net pins its own versions of shared
dependencies, so it lives in a virtual environment of its own and ``bench_nnunet.py`` calls this file with that
environment's interpreter.

``train`` is nnU-Net's default trainer (``nnUNetTrainer``: its loss with deep supervision, foreground oversampling,
augmentation, SGD with the poly schedule) with one change, how long it runs: after the first epoch the number of
epochs is set so that the run fits the budget, and the poly schedule is stretched over that number (nnU-Net's
documented way to shorten a run is a trainer variant with fewer epochs, e.g. ``nnUNetTrainer_50epochs``; this one
picks the number from the measured epoch time). It stops before an epoch that would end past the budget. The budget
counts the epochs, from the end of nnU-Net's set-up (data loaders, network) to the last epoch. The final weights
are written to ``fold_0/weights_final.pt`` in nnU-Net's results folder (printed last), a plain state dict that
loads with ``weights_only=True``, beside ``budget.json`` (epochs, iterations, seconds, mirroring axes).

``predict`` runs nnU-Net's own predictor (``nnUNetPredictor``: Gaussian-weighted sliding windows with step 0.5,
mirroring unless ``--no-mirroring``) on every ``*_0000.nii.gz`` of ``--images`` and saves the masks with their
softmax probabilities (``.npz``, nnU-Net's format), in the geometry of each input.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager


class BudgetTrainer(nnUNetTrainer):
    """nnU-Net's default trainer, run for as many epochs as a wall-clock budget allows (see the module docstring)."""

    budget_s: float = 2400.0
    iterations: int = 50
    val_iterations: int = 10

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = self.val_iterations
        self.num_epochs = 1000  # replaced after the first epoch, from its measured time

    def _epoch(self) -> None:
        """One epoch exactly as ``nnUNetTrainer.run_training`` runs it."""
        self.on_epoch_start()
        self.on_train_epoch_start()
        outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
        self.on_train_epoch_end(outputs)
        with torch.no_grad():
            self.on_validation_epoch_start()
            outputs = [self.validation_step(next(self.dataloader_val))
                       for _ in range(self.num_val_iterations_per_epoch)]
            self.on_validation_epoch_end(outputs)
        self.on_epoch_end()

    def run_training(self) -> None:
        self.on_train_start()
        t0 = time.perf_counter()
        done = 0
        while done < self.num_epochs:
            self._epoch()
            done += 1
            elapsed = time.perf_counter() - t0
            per_epoch = elapsed / done
            if done == 1:  # plan the schedule on the measured epoch time
                self.num_epochs = max(1, int(self.budget_s // per_epoch))
                self.lr_scheduler.max_steps = self.num_epochs
                self.print_to_log_file(f"budget {self.budget_s:.0f} s, first epoch {per_epoch:.1f} s: "
                                       f"{self.num_epochs} epochs of {self.num_iterations_per_epoch} iterations")
            if elapsed + per_epoch > self.budget_s:
                break
        seconds = time.perf_counter() - t0
        self.on_train_end()
        out = Path(self.output_folder)
        net = self.network.module if self.is_ddp else self.network
        torch.save(getattr(net, "_orig_mod", net).state_dict(), out / "weights_final.pt")  # compiled or not
        logged = self.logger.local_logger.my_fantastic_logging
        record = {"epochs": done, "planned_epochs": self.num_epochs, "iterations_per_epoch": self.iterations,
                  "val_iterations_per_epoch": self.val_iterations, "train_seconds": round(seconds, 1),
                  "budget_seconds": self.budget_s, "patch_size": list(self.configuration_manager.patch_size),
                  "batch_size": self.configuration_manager.batch_size,
                  "mirroring_axes": list(self.inference_allowed_mirroring_axes or []),
                  "ema_pseudo_dice": [float(x) for x in logged.get("ema_fg_dice", [])]}
        (out / "budget.json").write_text(json.dumps(record, indent=1))


def train(args: argparse.Namespace) -> None:
    pre = Path(os.environ["nnUNet_preprocessed"]) / args.dataset
    plans = json.loads((pre / f"{args.plans}.json").read_text())
    plans["continue_training"] = False  # what nnU-Net's get_trainer_from_args adds before building a trainer
    dataset_json = json.loads((pre / "dataset.json").read_text())
    BudgetTrainer.budget_s = args.budget_min * 60.0
    BudgetTrainer.iterations, BudgetTrainer.val_iterations = args.iterations, args.val_iterations
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_train does on the CPU
    trainer = BudgetTrainer(plans, args.configuration, 0, dataset_json, device=device)
    trainer.run_training()
    print(trainer.output_folder_base)


def predict(args: argparse.Namespace) -> None:
    model = Path(args.model)
    plans = json.loads((model / "plans.json").read_text())
    dataset_json = json.loads((model / "dataset.json").read_text())
    record = json.loads((model / "fold_0" / "budget.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration(args.configuration)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    net = nnUNetTrainer.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)
    weights = torch.load(model / "fold_0" / "weights_final.pt", map_location="cpu", weights_only=True)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=not args.no_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, allow_tqdm=False)
    predictor.manual_initialization(net, pm, cm, [weights], dataset_json, "nnUNetTrainer",
                                    tuple(record["mirroring_axes"]))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    predictor.predict_from_files_sequential(str(args.images), str(args.out), save_probabilities=True, overwrite=True)
    (Path(args.out) / "predict.json").write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1),
                                                             "mirroring": not args.no_mirroring}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    t = sub.add_parser("train")
    t.add_argument("--dataset", required=True)
    t.add_argument("--plans", default="nnUNetPlans")
    t.add_argument("--configuration", default="3d_fullres", help="nnU-Net configuration: 3d_fullres or 2d")
    t.add_argument("--budget-min", type=float, required=True)
    t.add_argument("--iterations", type=int, default=50)
    t.add_argument("--val-iterations", type=int, default=10)
    t.add_argument("--device", default="cpu")
    p = sub.add_parser("predict")
    p.add_argument("--model", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-mirroring", action="store_true")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--device", default="cpu")
    args = ap.parse_args()
    train(args) if args.verb == "train" else predict(args)


if __name__ == "__main__":
    main()
