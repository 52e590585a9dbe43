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


def test_training_card_records_the_slice_spacing_range_and_ensembles_join_theirs():
    from monai_pipeline.model_file import outside_training_spacing, slice_spacing_range, training_data_card

    files = [{"case_id": "a", "source": "lidc"}, {"case_id": "b", "source": "lidc"}]
    card = training_data_card(files, [2.5, 1.25])
    assert card == {"n_cases": 2, "sources": {"lidc": 2}, "slice_spacing_mm": [1.25, 2.5]}
    assert "slice_spacing_mm" not in training_data_card(files, None)
    other = training_data_card(files, [3.0])
    assert slice_spacing_range([{"training_data": card}, {"training_data": other}]) == (1.25, 3.0)
    assert slice_spacing_range([{"training_data": card}, {"epochs_trained": 3}]) is None  # an older member
    assert not outside_training_spacing(3.0 * 1.25, (1.25, 3.0))
    assert outside_training_spacing(5.0, (1.25, 3.0))
    assert outside_training_spacing(0.6, (1.25, 3.0))
    assert not outside_training_spacing(5.0, None)
    from monai_pipeline.model_file import describe_training_data

    assert describe_training_data({"training_data": card}) == "trained on 2 case(s): 2 lidc; slices 1.25-2.5 mm apart"
    assert describe_training_data({"training_data": other}).endswith("2 lidc; slices 3 mm apart")
