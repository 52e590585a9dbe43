"""What a model file says about itself (model_file.py)."""

from __future__ import annotations

from monai_pipeline.model_file import kept_weights


def test_kept_weights_read_from_the_file_or_inferred_for_older_files():
    """Files since ``training.keep`` say which weights they hold; older ones held the best checkpoint exactly when
    a validation ran, which they recorded as its epoch."""
    assert kept_weights({"weights": "final", "best_epoch": 3}) == "final"
    assert kept_weights({"weights": "best", "best_epoch": 3}) == "best"
    assert kept_weights({"best_epoch": 50, "best_val_mean_dice": 0.6}) == "best"
    assert kept_weights({"epochs_trained": 2}) == "final"
    assert kept_weights({"best_epoch": None}) == "final"
