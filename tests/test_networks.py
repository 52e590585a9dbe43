"""Networks from configuration, and the model file's weights_only loading."""

from __future__ import annotations

import pytest
import torch

from monai_pipeline.errors import InputError
from monai_pipeline.model_file import load_model_file, save_model_file
from monai_pipeline.networks import build_network


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


@pytest.mark.parametrize("cin,cout,shape,bias", [(16, 2, (5, 7, 6), True), (8, 3, (4, 4, 1), False),
                                                 (4, 4, (3, 2, 5), True)])
def test_subpixel_form_equals_the_transposed_convolution(cin, cout, shape, bias):
    from monai_pipeline.networks import SubPixelConvTranspose3d

    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose3d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=bias).double()
    x = torch.randn(2, cin, *shape, dtype=torch.float64)
    out = SubPixelConvTranspose3d.from_module(conv)(x)
    ref = conv(x)
    assert out.shape == ref.shape == (2, cout, *(2 * s for s in shape))
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("conv", [torch.nn.ConvTranspose3d(16, 2, 2, stride=2),
                                  torch.nn.ConvTranspose3d(16, 2, 3, stride=2, padding=1),
                                  torch.nn.ConvTranspose3d(16, 2, 3, stride=1, padding=1),
                                  torch.nn.ConvTranspose3d(16, 2, 3, stride=2, padding=1, output_padding=1, groups=2),
                                  torch.nn.Conv3d(16, 2, 3)])
def test_subpixel_form_refuses_other_convolutions(conv):
    from monai_pipeline.networks import SubPixelConvTranspose3d

    assert not SubPixelConvTranspose3d.applies_to(conv)
    with pytest.raises(ValueError, match="not a kernel-3"):
        SubPixelConvTranspose3d.from_module(conv)


def test_inference_form_of_a_monai_unet_gives_its_output():
    """MONAI UNet (demo layout): only the last up-sampling (32 -> 2 channels) qualifies; the network's output is
    unchanged (float64), and the setting turns it off."""
    from monai_pipeline.config import load_config
    from monai_pipeline.networks import SubPixelConvTranspose3d, inference_form

    spec = {"name": "UNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                       "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1,
                                       "norm": "batch"}}
    torch.manual_seed(0)
    net = build_network(spec).double().eval()
    x = torch.randn(1, 1, 32, 24, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
    cfg = load_config({"network": spec})
    off = inference_form(build_network(spec), cfg.merged({"inference": {"subpixel_upsampling": False}}).inference,
                         torch.device("cpu"))
    assert not any(isinstance(m, SubPixelConvTranspose3d) for m in off.modules())
    fast = inference_form(net, cfg.inference, torch.device("cpu"))
    replaced = [m for m in fast.modules() if isinstance(m, SubPixelConvTranspose3d)]
    assert [m.out_channels for m in replaced] == [2]
    assert sum(type(m) is torch.nn.ConvTranspose3d for m in fast.modules()) == 2
    with torch.no_grad():
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last_3d)), ref, atol=1e-10, rtol=0)


def test_subpixel_form_keeps_parameters_state_dict_and_gradients():
    """The swap keeps the very parameters and the state_dict keys, and trains like the original: same gradients;
    weights loaded afterwards are used."""
    from monai_pipeline.networks import use_subpixel_upsampling

    spec = {"name": "UNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                       "channels": [16, 32], "strides": [2], "num_res_units": 1}}
    torch.manual_seed(0)
    ref = build_network(spec).double()
    net = build_network(spec).double()
    net.load_state_dict(ref.state_dict())
    params = dict(net.named_parameters())
    assert use_subpixel_upsampling(net) == 1 and use_subpixel_upsampling(net) == 0
    assert {k: id(v) for k, v in net.named_parameters()} == {k: id(v) for k, v in params.items()}
    assert list(net.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 1, 16, 12, 8, dtype=torch.float64)
    ref(x).square().mean().backward()
    net(x).square().mean().backward()
    for (name, a), b in zip(ref.named_parameters(), net.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-10), name
    other = build_network(spec).double()
    net.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), other.eval()(x), atol=1e-10)
