"""Networks from configuration, and the model file's weights_only loading."""

from __future__ import annotations

import pytest
import torch

from monai_pipeline.errors import InputError
from monai_pipeline.networks import build_network, load_model_file, save_model_file


@pytest.mark.parametrize("spec", [
    {"name": "UNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
                                "strides": [2]}},
    {"name": "SegResNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8}},
    {"name": "DynUNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3],
                                   "strides": [1, 2, 2], "upsample_kernel_size": [2, 2]}},
])
def test_build_each_network(spec):
    net = build_network(spec)
    assert net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


def test_model_file_roundtrip_and_errors(tmp_path):
    from monai_pipeline.config import load_config

    cfg = load_config({"network": {"name": "UNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                              "channels": [4, 8], "strides": [2]}}})
    net = build_network(cfg.network)
    path = save_model_file(tmp_path / "m.pt", net, cfg)
    loaded, blob = load_model_file(path)
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert blob["config"] == cfg.to_dict()
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a monai-pipeline-model/1 file"):
        load_model_file(tmp_path / "other.pt")
    (tmp_path / "evil.pt").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="not a loadable model file"):
        load_model_file(tmp_path / "evil.pt")
