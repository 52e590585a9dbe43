"""Mirroring TTA: the combinations of axes, and TTA restricted to crops around the plain pass's candidates."""

from __future__ import annotations

import pytest
import torch

from monai_pipeline.config import load_config
from monai_pipeline.errors import ConfigError
from monai_pipeline.inferers import (
    TTA_SIZE_MULTIPLE,
    ProbabilityInferer,
    build_sliding_window,
    mirrorings,
    tta_crops,
)


def test_mirrorings_are_every_combination_identity_first() -> None:
    assert mirrorings((0, 1, 2)) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert mirrorings((2,)) == [(), (4,)]
    with pytest.raises(ConfigError, match="tta_axes"):
        load_config({"inference": {"tta_axes": [0, 0]}})


class _Blob(torch.nn.Module):
    """A fixed "network": foreground logit high where the input is bright, plus a mirror-asymmetric term so
    that mirrored passes differ from the plain one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-0.3, 0.3, x.shape[2]).view(1, 1, -1, 1, 1)
        fg = 8.0 * (x - 0.5) + ramp
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def _expected_crop_tta(x: torch.Tensor, plain: torch.Tensor, cfg, net, crop) -> torch.Tensor:
    """The plain pass plus the 7 mirrored passes over ``crop``, each with windows no larger than the crop (rounded
    up to the size multiple), averaged: what candidate TTA must give inside the crop's region."""
    index = (slice(None), slice(None), *crop)
    sub = x[index]
    roi = tuple(min(r, -(-n // TTA_SIZE_MULTIPLE) * TTA_SIZE_MULTIPLE)
                for r, n in zip(cfg.inference.roi_size, sub.shape[2:], strict=True))
    window = build_sliding_window(cfg, roi_size=roi)
    total = plain[index].clone()
    for axes in mirrorings((0, 1, 2))[1:]:
        total += torch.flip(torch.softmax(window(torch.flip(sub, axes), net), 1), axes)
    return total / 8


def _cfg():
    return load_config({"inference": {"roi_size": [32, 32, 32], "overlap": 0.25, "tta": True, "bf16": False,
                                      "tta_scope": "candidates"}})


def test_candidate_tta_is_the_mean_of_all_passes_on_each_crop_and_plain_elsewhere() -> None:
    cfg = _cfg()
    x = torch.zeros(1, 1, 96, 80, 64)
    x[0, 0, 10:16, 12:18, 8:14] = 1.0  # two small bright candidates far apart
    x[0, 0, 70:76, 60:66, 44:50] = 1.0
    net = _Blob()
    inferer = ProbabilityInferer(cfg, "cpu")
    out = inferer(x, net)
    assert 0 < inferer.last_tta_fraction < 1
    plain = ProbabilityInferer(cfg.merged({"inference": {"tta": False}}), "cpu")(x, net)
    crops = tta_crops(plain[0, 1], 0.5)
    assert len(crops) == 2
    covered = torch.zeros(x.shape[2:], dtype=torch.bool)
    for crop, region in crops:
        assert all((b.stop - b.start) % TTA_SIZE_MULTIPLE == 0 for b in crop)
        expected = _expected_crop_tta(x, plain, cfg, net, crop)
        index = (slice(None), slice(None), *crop)
        torch.testing.assert_close(out[index][0][:, region], expected[0][:, region])
        covered[crop] |= region
    torch.testing.assert_close(out[0][:, ~covered], plain[0][:, ~covered])
    # the mirrored passes changed the candidates' probabilities (the ramp is not mirror-symmetric)
    assert not torch.allclose(out[0][:, covered], plain[0][:, covered])


def test_overlapping_crops_each_decide_their_own_region() -> None:
    """Two candidates close enough for their crops to overlap, far enough to be separate regions: each region
    keeps its own crop's result (a later crop must not overwrite an earlier region with the plain pass)."""
    cfg = _cfg()
    x = torch.zeros(1, 1, 96, 64, 48)
    x[0, 0, 20:26, 20:26, 20:26] = 1.0
    x[0, 0, 36:42, 20:26, 20:26] = 1.0
    net = _Blob()
    out = ProbabilityInferer(cfg, "cpu")(x, net)
    plain = ProbabilityInferer(cfg.merged({"inference": {"tta": False}}), "cpu")(x, net)
    crops = tta_crops(plain[0, 1], 0.5)
    assert len(crops) == 2
    (a, ra), (b, rb) = crops
    assert all(p.start < q.stop and q.start < p.stop for p, q in zip(a, b, strict=True)), "crops should overlap"
    for crop, region in crops:
        expected = _expected_crop_tta(x, plain, cfg, net, crop)
        index = (slice(None), slice(None), *crop)
        torch.testing.assert_close(out[index][0][:, region], expected[0][:, region])


def test_speckled_prediction_falls_back_to_mirroring_the_whole_volume() -> None:
    cfg = _cfg()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 1, 64, 64, 48, generator=g) > 0.97).float()  # candidates everywhere
    net = _Blob()
    inferer = ProbabilityInferer(cfg, "cpu")
    out = inferer(x, net)
    assert inferer.last_tta_fraction == 1.0
    whole = ProbabilityInferer(cfg.merged({"inference": {"tta_scope": "volume"}}), "cpu")(x, net)
    torch.testing.assert_close(out, whole)


def test_a_batch_is_mirrored_item_by_item() -> None:
    """Small inputs stack every item's mirrorings into one sliding window; each item must get exactly what it
    gets alone."""
    cfg = _cfg().merged({"inference": {"tta_scope": "volume"}})
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 24, 20, 16, generator=g)  # 2 x 8 mirrorings x 7680 voxels < 8 windows of 32^3: stacked
    net = _Blob()
    inferer = ProbabilityInferer(cfg, "cpu")
    both = inferer(x, net)
    for i in range(2):
        torch.testing.assert_close(both[i:i + 1], inferer(x[i:i + 1], net))
    assert not torch.allclose(both[0], both[1])


def test_every_door_runs_the_network_in_its_inference_form():
    """The inferer (used by `infer`, the API and the bundle's evaluator) puts the network into its inference form
    once (sub-pixel last up-sampling, channels-last), with the same probabilities and the same parameters --
    also a wrapper that was never switched to evaluation mode (the benchmark's voxel counter)."""
    from monai_pipeline.networks import SubPixelConvTranspose3d, build_network

    spec = {"name": "UNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                       "channels": [16, 32], "strides": [2], "num_res_units": 1}}
    cfg = load_config({"network": spec, "inference": {"roi_size": [16, 16, 16], "tta": False, "bf16": False}})
    torch.manual_seed(0)
    net = build_network(spec).eval()
    x = torch.randn(1, 1, 24, 20, 16)
    with torch.no_grad():
        before = torch.softmax(build_sliding_window(cfg)(x, net), 1)
    inferer = ProbabilityInferer(cfg, "cpu")
    params = [id(p) for p in net.parameters()]
    wrapper = torch.nn.Sequential(net)  # training mode, as created
    out = inferer(x, wrapper)
    assert sum(isinstance(m, SubPixelConvTranspose3d) for m in net.modules()) == 1
    assert [id(p) for p in net.parameters()] == params
    assert torch.allclose(out, before, atol=1e-5)
    assert inferer.prepare(net) is net and torch.allclose(inferer(x, net), out)


class _Spy(torch.nn.Module):
    """Records the windows it is given; background everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.cat([torch.ones_like(x), torch.zeros_like(x)], dim=1)


def _z_ramp(shape: tuple[int, int, int]) -> torch.Tensor:
    """A (1, X, Y, Z) volume whose slice k holds (k + 1) / Z: every slice distinct, none of them 0 (air)."""
    z = shape[2]
    return ((torch.arange(z, dtype=torch.float32) + 1) / z).view(1, 1, 1, z).expand(1, *shape).clone()


def _edge_padded(x: torch.Tensor, before: int, after: int) -> None:
    """Assert that the last axis of ``x`` is its inner part with the end slices repeated ``before``/``after`` times."""
    z = x.shape[-1]
    inner = x[..., before:z - after]
    assert torch.unique(inner[0, 0, 0]).numel() == inner.shape[-1], "the volume's own slices come through"
    assert torch.equal(x[..., :before], inner[..., :1].expand(*inner.shape[:-1], before))
    assert torch.equal(x[..., z - after:], inner[..., -1:].expand(*inner.shape[:-1], after))


def test_thin_volumes_are_padded_by_their_edge_slices_in_training_and_in_the_window() -> None:
    """A scan thinner than the patch (training) or the window (inference) is padded the same way, by repeating
    its end slices, never with 0 (air under the HU window): the network meets at inference what it trained on."""
    from monai.data import MetaTensor
    from monai.transforms import Compose

    from monai_pipeline.transforms.pipeline import augmentation_transforms, sampling_index_transforms

    off = {"affine_prob": 0.0, "flip_prob": 0.0, "rotate90_prob": 0.0, "intensity_scale": 0.0,
           "intensity_shift": 0.0, "noise_prob": 0.0}
    cfg = load_config({"patch": {"size": [16, 16, 16], "num_samples": 2}, "augmentation": off,
                       "inference": {"roi_size": [16, 16, 16], "bf16": False, "tta": False}})
    image = _z_ramp((24, 24, 10))
    label = torch.zeros_like(image, dtype=torch.uint8)
    label[0, 10:13, 10:13, 4:6] = 1
    chain = Compose([*sampling_index_transforms(cfg), *augmentation_transforms(cfg)])
    patches = chain({"image": MetaTensor(image), "label": MetaTensor(label)})
    for p in patches:
        assert tuple(p["image"].shape) == (1, 16, 16, 16)
        _edge_padded(p["image"][None], 3, 3)

    spy = _Spy()
    build_sliding_window(cfg)(image[None], spy)
    assert spy.seen and all(tuple(w.shape[2:]) == (16, 16, 16) for w in spy.seen)
    for w in spy.seen:
        _edge_padded(w, 3, 3)
