"""Mirroring TTA: the combinations of axes, and TTA restricted to the plain pass's candidates."""

from __future__ import annotations

import pytest
import torch

from monai_pipeline.config import load_config
from monai_pipeline.errors import ConfigError
from monai_pipeline.inferers import (
    ProbabilityInferer,
    build_sliding_window,
    candidate_regions,
    mirrorings,
    window_count,
)


def test_mirrorings_are_every_combination_identity_first() -> None:
    assert mirrorings((0, 1, 2)) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert mirrorings((2,)) == [(), (4,)]
    with pytest.raises(ConfigError, match="tta_axes"):
        load_config({"inference": {"tta_axes": [0, 0]}})


def test_window_count_matches_monai_sliding_window() -> None:
    from monai.inferers import SlidingWindowInferer

    for shape, roi, overlap in [((70, 51, 40), (24, 24, 16), 0.25), ((24, 10, 16), (24, 24, 16), 0.5),
                                ((50, 50, 50), (16, 16, 16), 0.25)]:
        seen: list[int] = []
        SlidingWindowInferer(roi, sw_batch_size=1, overlap=overlap)(
            torch.zeros(1, 1, *shape), lambda w, seen=seen: seen.append(w.shape[0]) or w)
        assert window_count(shape, roi, overlap) == len(seen), (shape, roi, overlap)


class _Blob(torch.nn.Module):
    """A fixed "network": foreground logit high where the input is bright, plus a mirror-asymmetric term so
    that mirrored passes differ from the plain one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-0.3, 0.3, x.shape[2]).view(1, 1, -1, 1, 1)
        fg = 8.0 * (x - 0.5) + ramp
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def test_candidate_tta_equals_full_tta_near_candidates_and_plain_elsewhere() -> None:
    cfg = load_config({"inference": {"roi_size": [16, 16, 16], "overlap": 0.25, "tta": True, "bf16": False,
                                     "tta_scope": "candidates"}})
    x = torch.zeros(1, 1, 96, 80, 64)
    x[0, 0, 10:16, 12:18, 8:14] = 1.0  # two small bright candidates far apart
    x[0, 0, 70:76, 60:66, 44:50] = 1.0
    net = _Blob()
    inferer = ProbabilityInferer(cfg, "cpu")
    out = inferer(x, net)
    assert 0 < inferer.last_tta_fraction < 1
    plain = ProbabilityInferer(cfg.merged({"inference": {"tta": False}}), "cpu")(x, net)
    regions = candidate_regions(plain[0, 1], 0.05, 16, (16, 16, 16))
    assert len(regions) == 2
    covered = torch.zeros(x.shape[2:], dtype=torch.bool)
    window = build_sliding_window(cfg)
    for box, region in regions:
        index = (slice(None), slice(None), *box)
        sub = x[index]
        # the plain pass of the whole volume, plus the 7 mirrored passes over the region's box
        total = plain[index].clone()
        for axes in mirrorings((0, 1, 2))[1:]:
            total += torch.flip(torch.softmax(window(torch.flip(sub, axes), net), 1), axes)
        torch.testing.assert_close(out[index][0][:, region], (total / 8)[0][:, region])
        covered[box] |= region
    torch.testing.assert_close(out[0][:, ~covered], plain[0][:, ~covered])
