"""Real datasets, the validation split, and device-side batches."""

from adr_scale.data.datasets import DATASET_INFO, ArrayDataset, DatasetInfo, load_arrays
from adr_scale.data.loader import (
    Splits,
    augment,
    dataset_info,
    epoch_permutation,
    eval_batches,
    load_splits,
    real_stream_batches,
    resolve_data,
    split_validation,
    steps_per_epoch,
    to_float,
    train_batches,
)

__all__ = [
    "DATASET_INFO", "ArrayDataset", "DatasetInfo", "Splits", "augment", "dataset_info",
    "epoch_permutation",
    "eval_batches", "load_arrays", "load_splits", "real_stream_batches", "resolve_data", "split_validation", "steps_per_epoch",
    "to_float", "train_batches",
]
