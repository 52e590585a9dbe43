"""Configuration: defaults, overlays, validation messages."""

from __future__ import annotations

import pytest

from monai_pipeline.config import deep_merge, default_config, load_config
from monai_pipeline.errors import ConfigError, InputError


def test_defaults_validate_and_overlay_merges(tmp_path):
    cfg = load_config()
    assert cfg["preprocessing"]["orientation"] == "RAS" and cfg["network"]["name"] == "UNet"
    f = tmp_path / "o.yaml"
    f.write_text("inference: {overlap: 0.5}\n")
    merged = load_config(f, {"training": {"epochs": 3}})
    assert merged["inference"]["overlap"] == 0.5 and merged["inference"]["sw_batch_size"] == cfg["inference"]["sw_batch_size"]
    assert merged["training"]["epochs"] == 3
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
    assert default_config() == default_config()


@pytest.mark.parametrize("overlay,message", [
    ({"preprocessing": {"target_spacing": [1, 1]}}, "preprocessing.target_spacing must be 3 positive numbers"),
    ({"preprocessing": {"normalization": "zscore"}}, "preprocessing.normalization must be one of"),
    ({"preprocessing": {"crop": "liver"}}, "preprocessing.crop must be one of"),
    ({"network": {"name": "ResNet"}}, "network.name must be one of"),
    ({"inference": {"overlap": 1.0}}, "inference.overlap must be >= 0 and < 1, got 1.0"),
    ({"training": {"cache": "gpu"}}, "training.cache must be one of"),
    ({"postprocess": {"connectivity": 4}}, "postprocess.connectivity must be 6, 18 or 26, got 4"),
])
def test_invalid_values_are_named(overlay, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(overlay)


def test_bad_config_file(tmp_path):
    with pytest.raises(InputError, match="config file does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
