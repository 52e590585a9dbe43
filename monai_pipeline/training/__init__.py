"""Training on 3D patches with ``monai.engines.SupervisedTrainer``/``SupervisedEvaluator`` and ignite handlers.

``RUN/`` receives: ``checkpoints/`` (last epoch, for ``--resume``; best by validation Dice), ``model.pt`` (the
self-describing model file), ``config.yaml`` (the merged configuration), ``log.csv`` (one row per epoch),
``train.log``, ``tensorboard/`` and ``training_curve.png``.

Modules: :mod:`.run` (``train``), :mod:`.builders` (datasets, optimiser, schedule, evaluator, trainer: what the
bundle's ``train.json`` calls too), :mod:`.context` (what the builders share), :mod:`.labels` (label modes,
loss), :mod:`.checkpoints`, :mod:`.logs`, :mod:`.distributed` and :mod:`.preemption`.
"""

from monai_pipeline.training.builders import (
    build_evaluator,
    build_optimizer,
    build_scheduler,
    build_trainer,
    check_training_data,
    compute_intensity_stats,
    make_dataset,
    schedule_handlers,
    with_intensity_stats,
)
from monai_pipeline.training.checkpoints import (
    BEST_NAME,
    LAST_PREFIX,
    BestCheckpoint,
    checkpoint_epoch,
    latest_checkpoint,
    slice_spacings,
    write_last_checkpoint,
)
from monai_pipeline.training.context import RunContext
from monai_pipeline.training.distributed import (
    DistContext,
    init_distributed,
    resolve_device,
    weights_fingerprint,
)
from monai_pipeline.training.labels import (
    DATA_KEYS,
    ReaderAgreementBatch,
    StackedDeepSupervisionLoss,
    build_loss,
    build_prepare_batch,
    bundle_training_files,
    training_labels,
)
from monai_pipeline.training.logs import CSVLogger, plot_training_curve, read_log, tensorboard_handlers
from monai_pipeline.training.preemption import PREEMPTED_MARKER, PreemptionHandler
from monai_pipeline.training.run import train

__all__ = ["BEST_NAME", "DATA_KEYS", "LAST_PREFIX", "PREEMPTED_MARKER", "BestCheckpoint", "CSVLogger", "DistContext",
           "PreemptionHandler", "ReaderAgreementBatch", "RunContext", "StackedDeepSupervisionLoss", "build_evaluator",
           "build_loss", "build_optimizer", "build_prepare_batch", "build_scheduler", "build_trainer",
           "bundle_training_files", "check_training_data", "checkpoint_epoch", "compute_intensity_stats",
           "init_distributed", "latest_checkpoint", "make_dataset", "plot_training_curve", "read_log",
           "resolve_device", "schedule_handlers", "slice_spacings", "tensorboard_handlers", "train", "training_labels",
           "weights_fingerprint", "with_intensity_stats", "write_last_checkpoint"]
