"""``monai-pipeline train`` and the bundle's ``train.json`` build the same optimiser, schedule and validation
interval from one configuration overlay (the same builders, not two copies of the recipe)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from monai.handlers import ValidationHandler

from monai_pipeline.config import load_config
from monai_pipeline.networks import build_network
from monai_pipeline.training import (
    RunContext,
    build_evaluator,
    build_optimizer,
    build_scheduler,
    build_trainer,
    check_training_data,
)
from monai_pipeline.training.distributed import DistContext
from tests.conftest import REPO
from tests.helpers import TINY_NET

BUNDLE = REPO / "bundles" / "lung_nodule_ct_segmentation"


def _hyper(optimizer: torch.optim.Optimizer) -> tuple:
    g = optimizer.param_groups[0]
    return type(optimizer), {k: v for k, v in g.items() if k != "params"}


def _schedule(scheduler) -> tuple:
    return type(scheduler), {k: v for k, v in scheduler.state_dict().items() if not k.startswith("_")}


@pytest.mark.parametrize("overlay", [
    {"training": {"optimizer": "sgd", "lr": 0.01, "weight_decay": 3e-5, "scheduler": "poly", "val_interval": 3,
                  "epochs": 12}},
    {"training": {"optimizer": "adamw", "lr": 0.004, "scheduler": "cosine", "val_interval": 2, "epochs": 7}},
])
def test_train_and_the_bundle_build_the_same_optimiser_schedule_and_validation(tmp_path, tiny_dataset, overlay):
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "output", "logs"))
    (bundle / "models" / "pipeline.yaml").write_text(yaml.safe_dump({**overlay, "network": TINY_NET}))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(bundle)
    parser["dataset_dir"] = str(tiny_dataset)
    parser["device"] = "$torch.device('cpu')"
    bundle_optimizer = parser.get_parsed_content("optimizer")
    bundle_scheduler = parser.get_parsed_content("lr_scheduler")
    bundle_trainer = parser.get_parsed_content("train#trainer")

    # what `train` builds, from the same overlay over the bundle's configuration
    cfg = load_config(bundle / "configs" / "pipeline.yaml", bundle / "models" / "pipeline.yaml")
    net = build_network(cfg.network)
    optimizer = build_optimizer(cfg, net.parameters())
    scheduler = build_scheduler(cfg, optimizer, cfg.training.epochs)
    assert _hyper(bundle_optimizer) == _hyper(optimizer)
    assert _schedule(bundle_scheduler) == _schedule(scheduler)

    rc = RunContext(cfg, tmp_path / "run", torch.device("cpu"), DistContext(), False, cfg.training.epochs, False)
    train_files, val_files = check_training_data(tiny_dataset / "manifest.json", None, 2)
    trainer = build_trainer(rc, train_files, net, optimizer, scheduler, build_evaluator(rc, val_files, net))

    def intervals(engine) -> list[int]:
        return [h.interval for h in _handlers(engine) if isinstance(h, ValidationHandler)]

    assert intervals(trainer) == intervals(bundle_trainer) == [overlay["training"]["val_interval"]]
    assert bundle_trainer.state.max_epochs == trainer.state.max_epochs == overlay["training"]["epochs"]


def _handlers(engine) -> list:
    """The handler objects attached to an ignite engine (``attach`` registers their bound methods)."""
    found = []
    for handlers in engine._event_handlers.values():
        for h, _, _ in handlers:
            while hasattr(h, "__wrapped__"):  # ignite wraps handlers of filtered events (every=N)
                h = h.__wrapped__
            found.append(getattr(h, "__self__", h))
    return found


def test_bundle_without_a_validation_keeps_the_last_weights(tmp_path):
    from monai_pipeline.bundle import finish_training

    (tmp_path / "models").mkdir()
    net = build_network(TINY_NET)
    finish_training(net, load_config(), tmp_path)
    saved = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    assert (Path(tmp_path) / "models" / "pipeline.yaml").is_file()


def test_bundle_keeps_the_weights_training_keep_names(tmp_path):
    """The checkpoint saver wrote a best model.pt during training: ``keep: best`` leaves it, ``keep: final``
    (the default) replaces it with the network's last weights."""
    from monai_pipeline.bundle import finish_training

    (tmp_path / "models").mkdir()
    net = build_network(TINY_NET)
    saver_wrote = {k: v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    for keep, expected in (("best", saver_wrote), ("final", net.state_dict())):
        torch.save(saver_wrote, tmp_path / "models" / "model.pt")
        finish_training(net, load_config({"training": {"keep": keep}}), tmp_path)
        saved = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
        assert all(torch.equal(saved[k], v) for k, v in expected.items()), keep
