"""The MONAI bundle, checked the way model-zoo's CI checks bundles, on tiny synthetic data; copied out of the
repository (as ``monai.bundle download`` delivers it) and run with ``--dataset_dir`` only."""

from __future__ import annotations

import csv
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

pytestmark = pytest.mark.slow  # end to end: subprocesses, training or real CT

BUNDLE = REPO / "bundles" / "lung_nodule_ct_segmentation"
DATALIST = REPO / "data_manifests" / "synthetic.json"
SCHEMA = SHARED / "reference" / "monai_bundle_meta_schema_20240725.json"
FAST = {"epochs": 1}


@pytest.fixture(scope="module")
def bundle_data(tmp_path_factory):
    """The data the committed datalist describes, made by the command its description gives (with manifest.json)."""
    out = tmp_path_factory.mktemp("bsynth")
    r = run_cli("synth", "--out", out, "--cases", "8", "--seed", "0", "--matrix", "128", "--extent-mm", "80",
                "--min-diameter-mm", "5", "--pngs", "0")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture()
def bundle(tmp_path):
    """The bundle folder alone, copied away from the repository (nothing else of the repository beside it)."""
    dst = tmp_path / "alone" / "lung_nodule_ct_segmentation"
    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "output", "logs"))
    (dst / "models" / "pipeline.yaml").unlink(missing_ok=True)
    return dst


def _bundle_run(*configs, bundle, data, extra=(), nproc: int | None = None, cwd: Path | None = None):
    """``python -m monai.bundle run`` as the bundle README writes it: --bundle_root and --dataset_dir only."""
    paths = [str(bundle / "configs" / c) for c in configs]
    cfg = str(paths) if len(paths) > 1 else paths[0]
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}",
             "-m", "monai.bundle"] if nproc else [sys.executable, "-m", "monai.bundle"])
    args = [*head, "run", "--config_file", cfg, "--bundle_root", str(bundle), "--dataset_dir", str(data),
            "--logging_file", str(bundle / "configs" / "logging.conf"), *extra]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=900, cwd=cwd or bundle.parent)


def test_committed_datalist_matches_the_synth_command(bundle_data):
    made = json.loads((bundle_data / "manifest.json").read_text())
    committed = json.loads(DATALIST.read_text())
    for key in ("training", "validation", "test"):
        assert made[key] == committed[key]


@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared schema not present")
def test_verify_metadata():
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_large_files_describes_the_model():
    import yaml

    large = yaml.safe_load((BUNDLE / "large_files.yml").read_text())
    paths = [f["path"] for f in large["large_files"]]
    assert "models/model.pt" in paths


@pytest.mark.parametrize("n", [1, 2, 3])
def test_verify_net_in_out(bundle, n):
    """The configured network (no model dropped in) takes and returns the declared shapes, for the zoo's
    default n=1 as well."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), n=n, device="cpu",
                      bundle_root=str(bundle))


def test_bundle_configures_the_demo_recipe_the_figures_come_from():
    from monai_pipeline.config import bundle_config
    from monai_pipeline.demo import demo_config

    assert bundle_config(BUNDLE).to_dict() == demo_config().to_dict()


def test_config_files_are_formatted_as_the_zoo_hooks_want():
    """The zoo's pre-commit hooks pretty-format-json (4 spaces, keys unsorted) and end-of-file-fixer pass."""
    from pre_commit_hooks import end_of_file_fixer, pretty_format_json, trailing_whitespace_fixer

    files = sorted(str(p) for p in BUNDLE.rglob("*") if p.is_file() and p.suffix in (".json", ".yml", ".yaml",
                                                                                        ".md", ".txt", ".conf"))
    files = [f for f in files if "/eval/" not in f and "/output/" not in f and "/models/" not in f]
    jsons = [f for f in files if f.endswith(".json")]
    assert pretty_format_json.main(["--no-sort-keys", "--indent=4", *jsons]) == 0
    assert end_of_file_fixer.main(files) == 0  # would rewrite (and return 1) a file without a final newline
    assert trailing_whitespace_fixer.main(files) == 0


COMBINATIONS = [["inference.json"], ["train.json"], ["train.json", "evaluate.json"],
                ["inference.json", "evaluate.json"]]


@pytest.mark.parametrize("configs", COMBINATIONS, ids="+".join)
def test_every_config_parses_without_weights(bundle, bundle_data, configs):
    """Every top-level item of each config combination instantiates with no models/ files at all (as the zoo's
    tests parse bundles): provenance is computed at the first prediction, not at parse time."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) for c in configs])
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"], parser["dataset_dir"] = str(bundle), str(bundle_data)
    keys = [k for k in parser.get() if k not in ("imports", "initialize", "run", "finalize")]
    for key in keys:
        parser.get_parsed_content(key)
    assert {"network_def", "pipeline_config"} <= set(keys)
    assert not list((bundle / "models").glob("*.pt"))


def test_weights_load_with_what_large_files_delivers(bundle, bundle_data, tmp_path):
    """A model reduced to the files large_files.yml lists infers; its weights alone are refused in one line
    before any mask is written."""
    import yaml

    from monai_pipeline.bundle import export_to_bundle

    export_to_bundle(tiny_model_file(tmp_path / "tiny.pt"), bundle)
    listed = {f["path"] for f in yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]}
    assert listed == {"models/model.pt", "models/pipeline.yaml"}
    for p in (bundle / "models").iterdir():
        if f"models/{p.name}" not in listed:
            p.unlink()
    r = _bundle_run("inference.json", bundle=bundle, data=bundle_data)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((bundle / "output").glob("*.nii.gz"))
    shutil.rmtree(bundle / "output")
    (bundle / "models" / "pipeline.yaml").unlink()
    r = _bundle_run("inference.json", bundle=bundle, data=bundle_data)
    assert r.returncode != 0 and "has no pipeline.yaml beside it" in r.stderr
    assert not list((bundle / "output").glob("*.nii.gz")) if (bundle / "output").exists() else True


def test_copied_bundle_trains_infers_and_evaluates_with_dataset_dir_only(bundle, bundle_data):
    r = _bundle_run("train.json", bundle=bundle, data=bundle_data, extra=["--epochs", "1"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "models" / "pipeline.yaml").is_file()
    point = json.loads((bundle / "models" / "operating_point.json").read_text())  # chosen as `train` chooses it
    assert point["n_scans"] == len(json.loads((bundle_data / "manifest.json").read_text())["validation"])
    r = _bundle_run("inference.json", bundle=bundle, data=bundle_data)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((bundle_data / "manifest.json").read_text())
    for e in manifest["test"]:
        mask = sitk.ReadImage(str(bundle / "output" / f"{e['case_id']}.nii.gz"))
        img = sitk.ReadImage(str(bundle_data / e["image"]))
        assert mask.GetSize() == img.GetSize() and mask.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_allclose(mask.GetOrigin(), img.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(mask.GetDirection(), img.GetDirection(), atol=1e-6)
        marker = json.loads((bundle / "output" / ".done" / f"{e['case_id']}.json").read_text())
        assert len(marker["provenance"]["model_sha256"]) == 64
    r = _bundle_run("inference.json", "evaluate.json", bundle=bundle, data=bundle_data)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((bundle / "eval" / "summary.json").read_text())
    assert summary["n_cases"] == len(manifest["validation"]) + len(manifest["test"])
    rows = list(csv.DictReader(open(bundle / "eval" / "metrics.csv")))
    assert {r["case_id"] for r in rows} == {e["case_id"] for e in manifest["validation"] + manifest["test"]}
    # the zoo's habit: evaluate.json on top of train.json scores the same predictions the same
    shutil.rmtree(bundle / "eval")
    r = _bundle_run("train.json", "evaluate.json", bundle=bundle, data=bundle_data)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _read_rows(bundle / "eval" / "metrics.csv") == [dict(r) for r in rows]
    # the bundle's checkpoint is usable by the CLI as it is
    r = run_cli("infer", "--model", bundle / "models" / "model.pt", "--input",
                bundle_data / manifest["test"][0]["image"],
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


def _read_rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(open(path))]


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    """A DICOM series (feet first) and a NIfTI file in a non-RAS orientation (rows flipped), tiny."""
    from monai_pipeline.data.synthetic import SynthConfig, generate_case
    from monai_pipeline.io.dicom_writer import write_ct_series

    out = tmp_path_factory.mktemp("two")
    cfg = SynthConfig(matrix=96, spacing_xy=(0.7, 0.9), spacing_z=(1.5, 2.5), extent_z_mm=60.0, n_nodules=(2, 3),
                      diameter_mm=(6.0, 16.0))
    write_ct_series(generate_case(11, cfg, orientation="axial_ff").image, out / "series_ff")
    sitk.WriteImage(generate_case(12, cfg, orientation="flipped_rows").image, str(out / "flipped.nii.gz"))
    return out


def _with_overlay(model: Path, overlay: dict, out: Path) -> Path:
    """``model`` re-saved with ``overlay`` merged into its configuration (same weights)."""
    from monai_pipeline.config import config_from_model_dict
    from monai_pipeline.model_file import load_model_file, save_model_file

    net, blob = load_model_file(model)
    extra = {k: v for k, v in blob.items() if k in ("trained_on", "validated_on")}
    return save_model_file(out, net, config_from_model_dict(blob["config"]).merged(overlay), extra)


def test_bundle_infer_and_postprocess_give_the_same_masks(bundle, two_inputs, trained_tiny_model, tmp_path):
    """One model, three doors: the bundle's inference config, `monai-pipeline infer`, and `postprocess` over
    infer's raw decision. Masks voxel-identical, geometry identical, lesion tables identical."""
    from monai_pipeline.bundle import export_to_bundle

    # the tiny model is barely trained: its foreground is small specks that the default 10 mm3 minimum would
    # remove, leaving nothing to compare; the lung filter, resampling and hole filling stay as configured
    trained_tiny_model = _with_overlay(trained_tiny_model, {"postprocess": {"min_volume_mm3": 0.0}},
                                       tmp_path / "model.pt")
    export_to_bundle(trained_tiny_model, bundle)
    r = _bundle_run("inference.json", bundle=bundle, data=two_inputs)
    assert r.returncode == 0, r.stderr[-3000:]
    inputs = [two_inputs / "series_ff", two_inputs / "flipped.nii.gz"]
    r = run_cli("infer", "--model", trained_tiny_model, "--input", *inputs, "--out", tmp_path / "cli", "--device",
                "cpu",
                "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli("infer", "--model", trained_tiny_model, "--input", *inputs, "--out", tmp_path / "raw", "--device",
                "cpu",
                "--no-progress", "--no-postprocess")
    assert r.returncode == 0, r.stderr
    raw = [tmp_path / "raw" / "series_ff.nii.gz", tmp_path / "raw" / "flipped.nii.gz"]
    r = run_cli("postprocess", "--input", *raw, "--image", *inputs, "--model", trained_tiny_model, "--out",
                tmp_path / "pp")
    assert r.returncode == 0, r.stderr
    total = 0
    for cid in ("series_ff", "flipped"):
        ref = sitk.ReadImage(str(tmp_path / "cli" / f"{cid}.nii.gz"))
        ref_arr = sitk.GetArrayFromImage(ref)
        total += int(ref_arr.sum())
        for other in (bundle / "output" / f"{cid}.nii.gz", tmp_path / "pp" / f"{cid}.nii.gz"):
            img = sitk.ReadImage(str(other))
            assert img.GetSize() == ref.GetSize() and img.GetOrigin() == ref.GetOrigin()
            assert img.GetSpacing() == ref.GetSpacing() and img.GetDirection() == ref.GetDirection()
            np.testing.assert_array_equal(sitk.GetArrayFromImage(img), ref_arr, err_msg=str(other))
        cli_rows = _read_rows(tmp_path / "cli" / f"{cid}_lesions.csv")
        assert cli_rows == _read_rows(bundle / "output" / f"{cid}_lesions.csv")
        # postprocess has no probabilities, hence no score; every other column is identical
        scores = ("score", "network_score")
        assert _read_rows(tmp_path / "pp" / f"{cid}_lesions.csv", drop=scores) == [
            {k: v for k, v in row.items() if k not in scores} for row in cli_rows]
    assert total > 0, "the comparison needs non-empty masks"


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
        import yaml

        tiny = tiny_model_file(bundle.parent / "tiny.pt", {"network": yaml.safe_load(
            (bundle / "configs" / "pipeline.yaml").read_text())["network"]})
        from monai_pipeline.bundle import export_to_bundle

        export_to_bundle(tiny, bundle)
    wf = ConfigWorkflow(workflow_type=workflow_type, config_file=str(bundle / "configs" / config),
                        meta_file=str(bundle / "configs" / "metadata.json"),
                        logging_file=str(bundle / "configs" / "logging.conf"), bundle_root=str(bundle),
                        dataset_dir=str(bundle_data), **(FAST if workflow_type == "train" else {}))
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


def test_bundle_training_follows_the_label_mode(bundle, tmp_path):
    """``training.label_mode`` soft set in the bundle's configuration reaches the bundle's loss, prepare_batch
    and training datalist exactly as it reaches ``monai-pipeline train`` (the same builders)."""
    from monai.bundle import ConfigParser

    from monai_pipeline.training import ReaderAgreementBatch

    (bundle / "models" / "pipeline.yaml").write_text("training:\n  label_mode: soft\n")
    data = tmp_path / "data"
    data.mkdir()
    entry = {"image": "images/a.nii.gz", "label": "labels/a.nii.gz", "case_id": "a", "patient_id": "p",
             "label_readers": "labels_readers/a.nii.gz", "n_readers": 4, "source": "lidc", "fold": 0}
    (data / "manifest.json").write_text(json.dumps({"training": [entry], "validation": [], "test": []}))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(bundle)
    parser["dataset_dir"] = str(data)
    assert parser.get_parsed_content("pipeline_config").training.label_mode == "soft"
    loss = parser.get_parsed_content("loss")
    assert loss.dice.to_onehot_y is False
    files = parser.get_parsed_content("train#datalist")
    assert files == [{"image": str(data / "images/a.nii.gz"), "label": str(data / "labels_readers/a.nii.gz"),
                      "case_id": "a", "n_readers": 4}]
    assert isinstance(parser.get_parsed_content("train#trainer#prepare_batch"), ReaderAgreementBatch)
