"""Model-zoo unit test for the ``lung_nodule_ct_segmentation`` bundle, in the zoo's style: the file a pull
request to Project-MONAI/model-zoo adds as ``ci/unit_tests/test_lung_nodule_ct_segmentation.py``, run there by
``python ci/unit_tests/runner.py -b lung_nodule_ct_segmentation`` from the zoo's root (the bundle in
``models/lung_nodule_ct_segmentation``). ``scripts/zoo_ci.sh`` runs it against a model-zoo checkout.

Tiny synthetic chest CT (``monai_pipeline.data.synth_dataset.synthesize``; the package is the bundle's
requirement) and overrides that keep each workflow to seconds on a CPU: train one epoch, evaluate on top of
``train.json`` (the zoo's habit) and of ``inference.json``, and infer without loading weights.
"""

import os
import shutil
import tempfile
import unittest

from monai.bundle import ConfigWorkflow
from parameterized import parameterized
from utils import check_workflow

from monai_pipeline.data.synth_dataset import synthesize
from monai_pipeline.data.synthetic import SynthConfig

BUNDLE_ROOT = "models/lung_nodule_ct_segmentation"

TEST_CASE_1 = [  # train, evaluate
    {
        "bundle_root": BUNDLE_ROOT,
        "epochs": 1,
        "val_interval": 1,
        "train#dataset#cache_rate": 0.0,
        "validate#dataset#cache_rate": 0.0,
    }
]

TEST_CASE_2 = [  # inference
    {
        "bundle_root": BUNDLE_ROOT,
        "handlers#0#_disabled_": True,  # do not load weights
    }
]


def test_order(test_name1, test_name2):
    def get_order(name):
        if "train" in name:
            return 1
        if "eval" in name:
            return 2
        if "infer" in name:
            return 3
        return 4

    return get_order(test_name1) - get_order(test_name2)


def _workflow(workflow_type, config_files, override):
    bundle_root = override["bundle_root"]
    return ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=[os.path.join(bundle_root, "configs", name) for name in config_files],
        logging_file=os.path.join(bundle_root, "configs/logging.conf"),
        meta_file=os.path.join(bundle_root, "configs/metadata.json"),
        **override,
    )


class TestLungNoduleCTSeg(unittest.TestCase):
    def setUp(self):
        self.dataset_dir = tempfile.mkdtemp()
        cfg = SynthConfig(matrix=96, extent_z_mm=50.0, diameter_mm=(5.0, 30.0))
        synthesize(self.dataset_dir, n_cases=4, seed=0, cfg=cfg, progress=False)  # writes manifest.json

    def tearDown(self):
        shutil.rmtree(self.dataset_dir)
        for sub in ("eval", "output"):
            shutil.rmtree(os.path.join(BUNDLE_ROOT, sub), ignore_errors=True)
        for name in ("model.pt", "pipeline.yaml", "operating_point.json"):
            path = os.path.join(BUNDLE_ROOT, "models", name)
            if os.path.exists(path):
                os.remove(path)

    @parameterized.expand([TEST_CASE_1])
    def test_train_eval_config(self, override):
        override["dataset_dir"] = self.dataset_dir
        check_workflow(_workflow("train", ["train.json"], override), check_properties=True)
        self.assertTrue(os.path.isfile(os.path.join(BUNDLE_ROOT, "models/model.pt")))
        self.assertTrue(os.path.isfile(os.path.join(BUNDLE_ROOT, "models/pipeline.yaml")))

        # override train.json, thus set the workflow to "train" rather than "eval"
        check_workflow(_workflow("train", ["train.json", "evaluate.json"], override), check_properties=True)
        self.assertTrue(os.path.isfile(os.path.join(BUNDLE_ROOT, "eval/summary.json")))

        override_eval = {k: v for k, v in override.items() if "#" not in k and k not in ("epochs", "val_interval")}
        check_workflow(_workflow("eval", ["inference.json", "evaluate.json"], override_eval), check_properties=True)

    @parameterized.expand([TEST_CASE_2])
    def test_infer_config(self, override):
        override["dataset_dir"] = self.dataset_dir
        check_workflow(_workflow("infer", ["inference.json"], override), check_properties=True)
        self.assertTrue(os.listdir(os.path.join(BUNDLE_ROOT, "output")))


if __name__ == "__main__":
    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = test_order
    unittest.main(testLoader=loader)
