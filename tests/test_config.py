"""Configuration: defaults, overlays, validation messages."""

from __future__ import annotations

import re

import pytest

from monai_pipeline.config import deep_merge, default_dict, load_config
from monai_pipeline.errors import ConfigError, InputError


def test_defaults_validate_and_overlay_merges(tmp_path):
    cfg = load_config()
    assert cfg.preprocessing.orientation == "RAS" and cfg.network.name == "UNet"
    f = tmp_path / "o.yaml"
    f.write_text("inference: {overlap: 0.5}\n")
    merged = load_config(f, {"training": {"epochs": 3}})
    assert merged.inference.overlap == 0.5 and merged.inference.sw_batch_size == cfg.inference.sw_batch_size
    assert merged.training.epochs == 3 and merged.inference.roi_size == cfg.inference.roi_size
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
    assert default_dict() == default_dict()


@pytest.mark.parametrize("overlay,message", [
    ({"preprocessing": {"target_spacing": [1, 1]}}, "preprocessing.target_spacing must be a list of 3 numbers"),
    ({"preprocessing": {"target_spacing": [1, 0, 1]}}, "preprocessing.target_spacing must be 3 positive numbers"),
    ({"training": {"epochs": "ten"}}, "training.epochs must be an integer, got 'ten'"),
    ({"postprocess": {"fill_holes": "yes"}}, "postprocess.steps.fill_holes.enabled must be true or false"),
    ({"augmentation": {"flip_prob": 1.5}}, "augmentation.flip_prob must be in [0, 1], got 1.5"),
    ({"preprocessing": {"normalization": "zscore"}}, "preprocessing.normalization must be one of"),
    ({"preprocessing": {"crop": "liver"}}, "preprocessing.crop must be one of"),
    ({"network": {"name": "ResNet"}}, "network.name must be one of"),
    ({"inference": {"overlap": 1.0}}, "inference.overlap must be >= 0 and < 1, got 1.0"),
    ({"inference": {"foreground_threshold": 1.0}}, "inference.foreground_threshold must be > 0 and < 1, got 1.0"),
    ({"training": {"cache": "gpu"}}, "training.cache must be one of"),
    ({"postprocess": {"connectivity": 4}}, "postprocess.connectivity must be one of 6, 18, 26; got 4"),
])
def test_invalid_values_are_named(overlay, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overlay)


def test_bad_config_file(tmp_path):
    with pytest.raises(InputError, match="config file does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("overlay,key,suggestion", [
    ({"inference": {"overlapp": 0.5}}, "inference.'overlapp'", "did you mean 'overlap'?"),
    ({"postprocess": {"step": {}}}, "postprocess.'step'", "did you mean 'steps'?"),
    ({"trainig": {"epochs": 3}}, "'trainig'", "did you mean 'training'?"),
])
def test_misspelt_key_is_named_with_a_suggestion(overlay, key, suggestion):
    with pytest.raises(ConfigError, match=re.escape(f"unknown configuration key {key}; {suggestion}")):
        load_config(overlay)


def test_misspelt_key_in_a_file_names_the_file(tmp_path):
    f = tmp_path / "o.yaml"
    f.write_text("inference: {overlapp: 0.5}\n")
    with pytest.raises(InputError, match=re.escape(f"{f}: unknown configuration key inference.'overlapp'; "
                                                   "did you mean 'overlap'?")):
        load_config(f)


def test_config_is_frozen_and_round_trips_as_plain_data():
    import dataclasses

    from monai_pipeline.config import from_dict

    cfg = load_config({"inference": {"overlap": 0.4}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.inference.overlap = 0.9
    data = cfg.to_dict()
    assert data["inference"]["roi_size"] == list(cfg.inference.roi_size)  # lists, as YAML and model files store
    assert from_dict(data) == cfg


def test_library_code_has_no_fallback_defaults():
    """default.yaml is the only place a default lives: no cfg.get(key, fallback) / section.get(...) in the library."""
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "monai_pipeline"
    pattern = re.compile(r"\b(cfg|pre|post|inf|patch|p|a|t|tr|net)\.get\(")
    offenders = [f"{f.name}:{i}" for f in pkg.rglob("*.py") for i, line in enumerate(f.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, offenders


def test_old_model_dicts_missing_a_new_key_still_load():
    from monai_pipeline.config import config_from_model_dict

    stored = load_config().to_dict()
    del stored["postprocess"]["steps"]["lung_filter"]["lung_min_fraction"]
    assert config_from_model_dict(stored).postprocess == load_config().postprocess


def test_model_files_from_before_training_keep_say_they_kept_the_best_checkpoint():
    """A model file written before ``training.keep`` existed held its best validation checkpoint: its stored
    configuration loads with ``keep: best``; a configuration today defaults to the final weights."""
    from monai_pipeline.config import config_from_model_dict

    stored = load_config().to_dict()
    del stored["training"]["keep"]
    assert config_from_model_dict(stored).training.keep == "best"
    assert load_config().training.keep == "final"
    assert config_from_model_dict(load_config().to_dict()).training.keep == "final"
    with pytest.raises(ConfigError, match="training.keep"):
        load_config({"training": {"keep": "latest"}})


def test_flat_postprocess_keys_of_older_configurations_move_into_their_steps():
    """Model files and overlays of 0.1.x name post-processing settings flat; they load and mean the same."""
    from monai_pipeline.config import config_from_model_dict

    stored = load_config().to_dict()
    stored["postprocess"] = {"min_volume_mm3": 30.0, "keep_largest": True, "fill_holes": False, "opening_mm": 1.0,
                             "closing_mm": 2.0, "connectivity": 6, "lung_filter": False, "lung_closing_mm": 8.0,
                             "lung_min_fraction": 0.25}
    post = config_from_model_dict(stored).postprocess
    assert post.connectivity == 6
    assert post.steps == {"lung_filter": {"enabled": False, "lung_closing_mm": 8.0, "lung_min_fraction": 0.25,
                                          "keep_without_lungs": False},
                          "closing": {"enabled": True, "closing_mm": 2.0}, "opening": {"enabled": True,
                                                                                       "opening_mm": 1.0},
                          "fill_holes": {"enabled": False},
                          "split_necks": {"enabled": False, "min_depth_mm": 1.0},  # newer: off
                          "remove_small": {"enabled": True, "min_volume_mm3": 30.0},
                          "shape_filter": {"enabled": False, "max_elongation": 0.0},  # newer than 0.1.x: off
                          "keep_largest": {"enabled": True}}
    flat = load_config({"postprocess": {"min_volume_mm3": 5.0}}).postprocess
    assert flat.steps["remove_small"]["min_volume_mm3"] == 5.0


def test_an_overlay_naming_every_step_sets_their_order():
    steps = load_config().postprocess.steps
    reordered = dict(reversed(list(steps.items())))
    assert list(load_config({"postprocess": {"steps": reordered}}).postprocess.steps) == list(reversed(list(steps)))
    # naming some steps changes their settings, not the order
    assert list(load_config({"postprocess": {"steps": {"keep_largest": {"enabled": True}}}}).postprocess.steps) == \
        list(steps)
