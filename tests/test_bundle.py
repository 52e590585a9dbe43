"""The MONAI bundle, checked the way model-zoo's CI checks bundles, on tiny synthetic data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.conftest import REPO, SHARED
from tests.helpers import run_cli, tiny_model_file

BUNDLE = REPO / "bundles" / "lung_nodule_ct_segmentation"
DATALIST = REPO / "data_manifests" / "synthetic.json"
SCHEMA = SHARED / "reference" / "monai_bundle_meta_schema_20240725.json"
FAST = {"epochs": 1}


@pytest.fixture(scope="module")
def bundle_data(tmp_path_factory):
    """The data the committed datalist describes, made by the command its description gives."""
    out = tmp_path_factory.mktemp("bsynth")
    r = run_cli("synth", "--out", out, "--cases", "8", "--seed", "0", "--matrix", "128", "--extent-mm", "80",
                "--min-diameter-mm", "5", "--pngs", "0")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture()
def bundle(tmp_path):
    """A copy of the bundle, so runs never write into the repository."""
    dst = tmp_path / "lung_nodule_ct_segmentation"
    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "output", "pipeline.yaml"))
    shutil.copy(BUNDLE / "configs" / "pipeline.yaml", dst / "configs" / "pipeline.yaml")
    return dst


def _overrides(bundle, data):
    return {"bundle_root": str(bundle), "dataset_dir": str(data), "datalist": str(DATALIST)}


def _bundle_run(*configs, bundle, data, extra=(), nproc: int | None = None):
    cfg = str([str(bundle / "configs" / c) for c in configs]) if len(configs) > 1 else str(bundle / "configs" / configs[0])
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}",
             "-m", "monai.bundle"] if nproc else [sys.executable, "-m", "monai.bundle"])
    args = [*head, "run", "--config_file", cfg, "--bundle_root", str(bundle), "--dataset_dir", str(data),
            "--datalist", str(DATALIST), "--logging_file", str(bundle / "configs" / "logging.conf"), *extra]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)


def test_committed_datalist_matches_the_synth_command(bundle_data):
    made = json.loads((bundle_data / "manifest.json").read_text())
    committed = json.loads(DATALIST.read_text())
    for key in ("training", "validation", "test"):
        assert made[key] == committed[key]


@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared schema not present")
def test_verify_metadata():
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_verify_net_in_out(bundle):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), n=3, device="cpu",
                      bundle_root=str(bundle))


def test_train_infer_evaluate_as_documented(bundle, bundle_data):
    r = _bundle_run("train.json", bundle=bundle, data=bundle_data, extra=["--epochs", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "models" / "pipeline.yaml").is_file()
    r = _bundle_run("inference.json", bundle=bundle, data=bundle_data)
    assert r.returncode == 0, r.stderr[-3000:]
    test_cases = json.loads(DATALIST.read_text())["test"]
    for e in test_cases:
        mask = sitk.ReadImage(str(bundle / "output" / f"{e['case_id']}.nii.gz"))
        img = sitk.ReadImage(str(bundle_data / e["image"]))
        assert mask.GetSize() == img.GetSize() and mask.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_allclose(mask.GetOrigin(), img.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(mask.GetDirection(), img.GetDirection(), atol=1e-6)
    r = _bundle_run("train.json", "evaluate.json", bundle=bundle, data=bundle_data)
    assert r.returncode == 0, r.stderr[-3000:]
    raw = (bundle / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(raw) == 1 + len(json.loads(DATALIST.read_text())["validation"]) + len(test_cases)
    # the bundle's checkpoint is usable by the CLI as it is
    r = run_cli("infer", "--model", bundle / "models" / "model.pt", "--input", bundle_data / test_cases[0]["image"],
                "--out", bundle.parent / "cli_out", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    # and exports to TorchScript, which loads and runs
    from monai.bundle import ckpt_export

    ts = bundle / "models" / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=str(bundle / "configs" / "metadata.json"),
                config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle))
    net = torch.jit.load(str(ts))
    assert net(torch.rand(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


def test_cli_model_dropped_into_bundle(bundle, bundle_data, tmp_path):
    model = tiny_model_file(tmp_path / "model.pt")
    r = run_cli("export-bundle", "--model", model, "--bundle", bundle)
    assert r.returncode == 0, r.stderr
    r = _bundle_run("inference.json", bundle=bundle, data=bundle_data)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((bundle / "output").glob("*_lesions.csv"))) == len(json.loads(DATALIST.read_text())["test"])


@pytest.mark.parametrize("workflow_type,config", [("train", "train.json"), ("infer", "inference.json")])
def test_config_workflow(bundle, bundle_data, workflow_type, config):
    from monai.bundle import ConfigWorkflow

    if workflow_type == "infer":
        tiny = tiny_model_file(bundle.parent / "tiny.pt", {"network": json.loads(json.dumps(
            __import__("yaml").safe_load((bundle / "configs" / "pipeline.yaml").read_text())["network"]))})
        from monai_pipeline.bundle import export_to_bundle

        export_to_bundle(tiny, bundle)
    wf = ConfigWorkflow(workflow_type=workflow_type, config_file=str(bundle / "configs" / config),
                        meta_file=str(bundle / "configs" / "metadata.json"),
                        logging_file=str(bundle / "configs" / "logging.conf"), **_overrides(bundle, bundle_data),
                        **(FAST if workflow_type == "train" else {}))
    wf.initialize()
    assert not wf.check_properties()
    wf.run()
    wf.finalize()
    if workflow_type == "train":
        assert (bundle / "models" / "model.pt").is_file()
    else:
        assert list((bundle / "output").glob("*.nii.gz"))


def test_multi_gpu_train_with_torchrun_on_cpu(bundle, bundle_data):
    """Two processes, gloo chosen automatically without a GPU, as model-zoo's multi-GPU test does with torchrun."""
    r = _bundle_run("train.json", "multi_gpu_train.json", bundle=bundle, data=bundle_data, extra=["--epochs", "1"],
                    nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (bundle / "models" / "model.pt").is_file()
    assert Path(bundle / "models" / "pipeline.yaml").is_file()
