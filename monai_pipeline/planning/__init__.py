"""Planning: a dataset fingerprint (:mod:`.fingerprint`) turned into a configuration overlay with a reason for
each setting (:mod:`.planner`), as nnU-Net plans its experiments."""

from monai_pipeline.planning.fingerprint import dataset_fingerprint, read_fingerprint
from monai_pipeline.planning.planner import Plan, plan

__all__ = ["Plan", "dataset_fingerprint", "plan", "read_fingerprint"]
