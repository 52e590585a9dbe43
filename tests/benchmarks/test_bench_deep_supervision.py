"""bench_deep_supervision times the three networks through the project's own loss, on tiny patches."""

from __future__ import annotations

from tests.helpers import load_benchmark


def _bench():
    return load_benchmark("bench_deep_supervision")


def test_each_network_steps_and_the_heads_add_parameters():
    mod = _bench()
    nets = mod.configurations()
    results = {name: mod.step_seconds(net, [16, 16, 16], 2, 1, "cpu") for name, net in nets.items()}
    (n_unet, t_unet), (n_dyn, _), (n_ds, t_ds) = results.values()
    assert t_unet > 0 and t_ds > 0
    assert n_ds > n_dyn > n_unet, "DynUNet is wider than the UNet; deep supervision adds 1x1x1 output heads"
