"""bench_deep_supervision times the three networks through the project's own loss, on tiny patches."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_deep_supervision.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_deep_supervision", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_each_network_steps_and_the_heads_add_parameters():
    mod = _bench()
    nets = mod.configurations()
    results = {name: mod.step_seconds(net, [16, 16, 16], 2, 1, "cpu") for name, net in nets.items()}
    (n_unet, t_unet), (n_dyn, _), (n_ds, t_ds) = results.values()
    assert t_unet > 0 and t_ds > 0
    assert n_ds > n_dyn > n_unet, "DynUNet is wider than the UNet; deep supervision adds 1x1x1 output heads"
