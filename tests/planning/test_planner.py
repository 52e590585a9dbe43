"""The planner: its rules on fingerprints with known answers, its memory model against a measured training step,
``plan`` on a small dataset whose overlay then trains, and ``configs/lidc.yaml`` made by the planner from
``configs/lidc_fingerprint.json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from monai_pipeline.config import load_config
from monai_pipeline.planning.planner import (
    BYTES_PER_ACTIVATION,
    activation_elements,
    level_strides,
    plan,
    target_spacing,
    training_memory_bytes,
)
from tests.conftest import REPO
from tests.helpers import run_cli


def _fp(spacing=(0.7, 0.7, 1.25), extent=(250.0, 180.0, 240.0), n=100, p95=20.0, per_case=2.0) -> dict:
    return {"summary": {
        "n_cases": n, "spacing_mm": {"median": list(spacing), "p10": [s * 0.8 for s in spacing],
                                     "p90": [s * 1.2 for s in spacing]},
        "shape": {"median": [512, 512, 200]}, "lung_extent_mm": {"median": list(extent), "p90": list(extent)},
        "foreground_hu": {"mean": -100.0, "std": 300.0, "p00_5": -800.0, "p99_5": 700.0},
        "lesions": {"n": int(n * per_case), "per_case": per_case,
                    "diameter_mm": {"min": 3.0, "median": 8.0, "p95": p95, "max": 30.0}}}}


def test_target_spacing_median_or_tenth_percentile_when_anisotropic():
    assert target_spacing(_fp((0.7, 0.7, 1.25))["summary"])[0] == [0.7, 0.7, 1.25]
    spacing, why = target_spacing(_fp((0.7, 0.7, 2.5))["summary"])
    assert spacing == [0.7, 0.7, 2.0] and "anisotropic" in why


def test_strides_wait_for_a_coarse_axis_and_keep_eight_voxels():
    strides = level_strides([128, 128, 32], [0.7, 0.7, 2.5])
    assert strides[0] == [2, 2, 1]  # z (2.5 mm) waits until x/y (1.4 mm after one level) are within 2x
    assert strides[1] == [2, 2, 2]
    size = [128, 128, 32]
    for s in strides:
        size = [n // k for n, k in zip(size, s, strict=True)]
    assert min(size) >= 8


@pytest.mark.parametrize("device,memory", [("cpu", 4.0), ("cuda", 10.0), ("cuda", 40.0)])
def test_plans_fit_their_memory_and_strides(device, memory):
    p = plan(_fp(), device=device, memory_gb=memory, epochs=10)
    ov = p.overlay()
    patch, kwargs = ov["patch"]["size"], ov["network"]["kwargs"]
    patches = 2 * ov["training"]["batch_size"]
    assert training_memory_bytes(patch, kwargs["strides"], kwargs["channels"], patches) <= memory * 2**30
    for a in range(3):
        total = 1
        for s in kwargs["strides"]:
            total *= s[a]
        assert patch[a] % total == 0
    if device == "cpu":
        assert max(n * s for n, s in zip(patch, ov["preprocessing"]["target_spacing"], strict=True)) <= 60.0 + 1e-6
    assert kwargs["channels"][0] == (32 if device == "cuda" else 16) and max(kwargs["channels"]) <= 320
    assert patch[0] == patch[1], "square in-plane patches (the 90-degree rotation augmentation needs them)"
    # the overlay is a valid configuration, and the YAML says why for every setting
    load_config(ov)
    text = p.to_yaml()
    assert yaml.safe_load(text) == ov
    assert text.count("  # ") == len(p.choices)


def test_more_memory_buys_a_larger_patch_or_step():
    small, big = (plan(_fp(), device="cuda", memory_gb=m, epochs=1).overlay() for m in (8.0, 40.0))
    voxels = [s["patch"]["size"][0] * s["patch"]["size"][1] * s["patch"]["size"][2] * s["training"]["batch_size"]
              for s in (small, big)]
    assert voxels[1] > voxels[0]


def test_epochs_from_a_time_budget():
    ov = plan(_fp(n=40), device="cpu", memory_gb=4.0, time_budget_min=10, step_seconds=0.5).overlay()
    steps_per_epoch = 40 // ov["training"]["batch_size"]
    assert ov["training"]["epochs"] == int(10 * 60 * 0.85 / (0.5 * steps_per_epoch))


def test_second_stage_when_a_validation_fold_holds_ten_lesions():
    """Rule 8: a fifth of the lesions is the validation fold of a 5-fold cross-validation."""
    on = plan(_fp(n=25, per_case=2.0), device="cpu", epochs=1).overlay()  # 50 lesions: 10 per fold
    off = plan(_fp(n=24, per_case=2.0), device="cpu", epochs=1).overlay()  # 48: 9.6 per fold
    assert on["training"]["fp_reduction"] is True and "fp_reduction" not in off["training"]


MEASURE = """
import json, sys, torch
from monai.networks.nets import UNet
torch.set_num_threads(1)
kw, patch, n = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
net = UNet(**kw)
opt = torch.optim.AdamW(net.parameters())
x = torch.randn(n, 1, *patch)


def step():
    opt.zero_grad(); net(x).mean().backward(); opt.step()


def status(key):
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith(key)).split()[1]) * 1024


# one step first: the libraries' code pages, the optimiser's state and their caches are resident before measuring
# (under memory pressure the kernel may have dropped code pages, which a first step would fault back in)
step()
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak resident size (VmHWM) starts again from the current one (Linux >= 4.0)
except OSError:
    print(-1)  # no resettable peak here: nothing trustworthy to report
    sys.exit(0)
before = status("VmRSS")
for _ in range(2):
    step()
print(status("VmHWM") - before)
"""


#: glibc's mmap threshold fixed (its default adapts to past frees) so that every buffer over 64 KiB is mapped on
#: allocation and unmapped on free: the resident set then follows the live tensors, and the peak repeats to 0.1 %
#: between runs (with the adaptive default it varied 2-3 fold, and a factor-2 band failed at random). The peak is
#: taken over two steps after a first one (``MEASURE``), and the smaller of two runs counts: an import's own peak
#: and code pages faulted in again under memory pressure once made a run of the suite read 464 MB for 111 MB.
DETERMINISTIC_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"}


def measured_step_bytes(kw: dict, patch: list[int], patches: int) -> int:
    """The peak resident memory (bytes) two training steps add, measured in a fresh interpreter."""
    env = {**os.environ, **DETERMINISTIC_MALLOC}
    r = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(kw), json.dumps(patch), str(patches)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    if int(r.stdout.strip()) < 0:
        pytest.skip("/proc/self/clear_refs cannot reset the peak resident size here (not Linux >= 4.0, or /proc "
                    "read-only)")
    return int(r.stdout.strip())


@pytest.mark.parametrize("patch,channels,strides", [([64, 64, 48], [16, 32, 64, 128], [[2, 2, 2]] * 3),
                                                    ([96, 96, 32], [32, 64, 128], [[2, 2, 1], [2, 2, 2]])])
def test_memory_model_bounds_a_measured_training_step(patch, channels, strides):
    """The estimate lies above the peak memory a real step adds (fp32, CPU), by at most a factor 4: the model
    budgets 3-3.5 times what this CPU measures, as margin for a GPU's workspaces (9-10 bytes per element)."""
    kw = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": channels, "strides": strides,
          "num_res_units": 1, "norm": "instance"}
    measured = min(measured_step_bytes(kw, patch, 2) for _ in range(2))
    estimate = training_memory_bytes(patch, strides, channels, 2)
    assert measured <= estimate <= 4 * measured, (measured, estimate)
    assert estimate == BYTES_PER_ACTIVATION * 2 * activation_elements(patch, strides, channels)


def test_the_measurement_repeats():
    """Two measurements of the same step agree within 2 %: the bounds above test the model, not the allocator."""
    kw = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32], "strides": [[2, 2, 2]] * 2,
          "num_res_units": 1, "norm": "instance"}
    a, b = (measured_step_bytes(kw, [48, 48, 32], 2) for _ in range(2))
    assert abs(a - b) <= 0.02 * max(a, b), (a, b)


def test_lidc_config_is_the_planners_output_for_the_lidc_fingerprint(tmp_path):
    """``configs/lidc.yaml`` is what docs/recipe.md says: plan --fingerprint configs/lidc_fingerprint.json
    --device cuda --memory-gb 22 --epochs 300 (no GPU needed: nothing is measured)."""
    r = run_cli("plan", "--fingerprint", REPO / "configs" / "lidc_fingerprint.json", "--device", "cuda",
                "--memory-gb", 22, "--epochs", 300, "--out", tmp_path / "lidc.yaml")
    assert r.returncode == 0, r.stderr
    shipped = yaml.safe_load((REPO / "configs" / "lidc.yaml").read_text())
    assert yaml.safe_load((tmp_path / "lidc.yaml").read_text()) == shipped
    cfg = load_config(REPO / "configs" / "lidc.yaml")
    assert cfg.preprocessing.crop == "lungs" and cfg.training.epochs == 300
    assert cfg.training.fp_reduction  # rule 8: 1372 lesions per validation fold


@pytest.mark.slow
def test_plan_on_a_dataset_then_train_with_it(tiny_dataset, tmp_path):
    manifest = tmp_path / "manifest.json"
    data = json.loads((tiny_dataset / "manifest.json").read_text())
    for section in data.values():
        for e in section if isinstance(section, list) else []:
            for k in ("image", "label"):
                if k in e:
                    e[k] = str((tiny_dataset / e[k]).resolve())
    manifest.write_text(json.dumps(data))
    r = run_cli("plan", "--manifest", manifest, "--out", tmp_path / "plan.yaml", "--time-budget-min", 0.5,
                "--memory-gb", 0.5)
    assert r.returncode == 0, r.stderr
    cache = Path(str(manifest) + ".fingerprint.json")
    fp = json.loads(cache.read_text())
    assert fp["summary"]["n_cases"] == len(data["training"]) and fp["summary"]["lesions"]["n"] > 0
    stamp = cache.stat().st_mtime_ns
    r = run_cli("plan", "--manifest", manifest, "--out", tmp_path / "plan2.yaml", "--epochs", 1, "--memory-gb", 0.5)
    assert r.returncode == 0 and cache.stat().st_mtime_ns == stamp, "the fingerprint came from the cache"
    r = run_cli("train", "--manifest", manifest, "--config", tmp_path / "plan2.yaml", "--out", tmp_path / "run",
                "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    blob = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    point = blob["operating_point"]  # train (default training.operating_fp_per_scan 1) chose one on validation
    assert point["n_scans"] == len(data["validation"]) and point["target_fp_per_scan"] == 1.0
