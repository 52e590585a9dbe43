"""Networks chosen by configuration (MONAI's, by the class names of ``config.NETWORKS``, the one list of them), and
the form in which every prediction path runs them. The model file is :mod:`monai_pipeline.model_file`."""

from __future__ import annotations

from typing import Any

import monai.networks.nets
import torch

from monai_pipeline.config import NETWORKS, InferenceConfig, NetworkConfig


def build_network(spec: NetworkConfig | dict[str, Any]) -> torch.nn.Module:
    """A network section (or the same as a dict, ``{"name": "UNet", "kwargs": {...}}``) -> the MONAI network."""
    if isinstance(spec, dict):
        spec = NetworkConfig(name=spec.get("name"), kwargs=dict(spec.get("kwargs", {})))
    name = spec.name
    if name not in NETWORKS:
        raise ValueError(f"network name must be one of {', '.join(NETWORKS)}, got {name!r}")
    kwargs = dict(spec.kwargs)
    for key in ("channels", "strides", "kernel_size", "upsample_kernel_size", "blocks_down", "blocks_up", "features"):
        if key in kwargs and isinstance(kwargs[key], list):
            kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in kwargs[key])
    return getattr(monai.networks.nets, name)(**kwargs)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") else network


class SubPixelConvTranspose3d(torch.nn.ConvTranspose3d):
    """A ``ConvTranspose3d`` with kernel 3, stride 2, padding 1 and output padding 1 (MONAI ``UNet``'s up-sampling)
    computed as one ordinary convolution followed by a sub-pixel shuffle -- the same sums in another order.

    Along each axis output voxel ``2m`` takes kernel tap 1 at input ``m``, and output ``2m + 1`` takes taps 2 and 0
    at inputs ``m`` and ``m + 1``. So a kernel-2 convolution over the input (padded by one voxel at the far end of
    every axis) with ``8 * out_channels`` outputs -- one group per (x, y, z) parity, unused taps zero -- holds every
    output voxel, which the shuffle moves to ``(2m + a, 2n + b, 2k + c)``. oneDNN runs the transposed form slowly
    when it has few output channels, such as MONAI UNet's last up-sampling (32 -> 2 channels at half
    resolution); this form is faster there (``docs/performance.md`` has the measurement).

    It *is* the transposed convolution it replaces (:meth:`from_module`): same parameters (the very tensors), same
    ``state_dict``; the convolution kernel is rebuilt from ``weight`` on every call, so training, loading weights
    and gradients behave as before. Input and output ``(N, C, X, Y, Z)``; the output is channels-last in memory.
    """

    #: per axis, output parity -> {input offset: kernel tap of the transposed convolution}
    TAPS = ({0: 1}, {0: 2, 1: 0})

    @staticmethod
    def applies_to(module: torch.nn.Module) -> bool:
        """True for the transposed convolutions this form reproduces."""
        return (isinstance(module, torch.nn.ConvTranspose3d) and module.kernel_size == (3, 3, 3)
                and module.stride == (2, 2, 2) and module.padding == (1, 1, 1)
                and module.output_padding == (1, 1, 1) and module.dilation == (1, 1, 1) and module.groups == 1
                and module.padding_mode == "zeros")

    @classmethod
    def from_module(cls, transposed: torch.nn.ConvTranspose3d) -> SubPixelConvTranspose3d:
        """The sub-pixel form of ``transposed``, sharing its weight and bias."""
        if not cls.applies_to(transposed):
            raise ValueError(f"not a kernel-3, stride-2, padding-1, output-padding-1 ConvTranspose3d: {transposed}")
        new = cls(transposed.in_channels, transposed.out_channels, 3, stride=2, padding=1, output_padding=1,
                  bias=transposed.bias is not None, device="meta")
        new.weight, new.bias = transposed.weight, transposed.bias
        new.train(transposed.training)
        return new.to(transposed.weight.device)  # the tap table beside the (shared) parameters

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # (8 parities, 8 taps) -> index into the flattened 3 x 3 x 3 kernel, 27 = an appended zero
        index = torch.full((8, 8), 27, dtype=torch.long)
        for p, (ta, tb, tc) in enumerate((a, b, c) for a in self.TAPS for b in self.TAPS for c in self.TAPS):
            for t, (oa, ob, oc) in enumerate((a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)):
                if oa in ta and ob in tb and oc in tc:
                    index[p, t] = ta[oa] * 9 + tb[ob] * 3 + tc[oc]
        self.register_buffer("taps", index, persistent=False)

    def subpixel_kernel(self) -> torch.Tensor:
        """The ``(8 * out_channels, in_channels, 2, 2, 2)`` convolution kernel, from ``weight``."""
        w = self.weight
        cin, cout = w.shape[:2]
        flat = torch.cat([w.reshape(cin, cout, 27), w.new_zeros(cin, cout, 1)], dim=2)
        kernel = flat[:, :, self.taps]  # (in, out, parity, tap)
        return kernel.permute(2, 1, 0, 3).reshape(8 * cout, cin, 2, 2, 2)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None:
            return super().forward(x, output_size)
        bias = self.bias.repeat(8) if self.bias is not None else None
        y = torch.nn.functional.conv3d(torch.nn.functional.pad(x, (0, 1, 0, 1, 0, 1)), self.subpixel_kernel(), bias)
        n, _, sx, sy, sz = y.shape
        c = self.out_channels
        out = y.new_empty((n, sx, 2, sy, 2, sz, 2, c))  # (N, X, 2, Y, 2, Z, 2, C): channels-last in memory
        out.copy_(y.view(n, 2, 2, 2, c, sx, sy, sz).permute(0, 5, 1, 6, 2, 7, 3, 4))
        return out.view(n, 2 * sx, 2 * sy, 2 * sz, c).permute(0, 4, 1, 2, 3)


def use_subpixel_upsampling(network: torch.nn.Module) -> int:
    """Swap, in place, every transposed convolution :class:`SubPixelConvTranspose3d` reproduces and that has at
    most an eighth as many output as input channels (where the one-convolution form is the faster one on CPU;
    with more output channels it is slower) for its sub-pixel form, which shares its parameters. Returns how many
    were swapped (0 when already done)."""
    targets = [(name, m) for name, m in network.named_modules()
               if SubPixelConvTranspose3d.applies_to(m) and not isinstance(m, SubPixelConvTranspose3d)
               and 8 * m.out_channels <= m.in_channels]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(network.get_submodule(parent_name) if parent_name else network, child,
                SubPixelConvTranspose3d.from_module(module))
    return len(targets)


def inference_form(network: torch.nn.Module, inference: InferenceConfig, device: torch.device) -> torch.nn.Module:
    """The network as every prediction path runs it (``infer``, the bundle, the Python API, through
    :meth:`~monai_pipeline.inferers.ProbabilityInferer.prepare`): channels-last 3D memory format
    (``inference.channels_last``) and sub-pixel up-sampling (``inference.subpixel_upsampling``; auto = on CPU).
    Both give the same sums; modifies ``network`` in place (call it after loading the weights) and returns it."""
    if inference.subpixel_upsampling is True or (inference.subpixel_upsampling == "auto" and device.type == "cpu"):
        use_subpixel_upsampling(network)
    if inference.channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
    return network
