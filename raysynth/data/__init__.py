"""Data stage: load a dataset, carve per-class splits, write the real splits to the run directory.

Plain Python and pyarrow (no Ray): the pipeline wires these functions to Ray Data.
"""

from raysynth.data.images import decode_png, encode_png, to_tensor_array
from raysynth.data.imageset import ImageSet, real_sample_id
from raysynth.data.sources import load_dataset
from raysynth.data.splits import (
    SPLIT_NAMES,
    Splits,
    long_tail_counts,
    long_tail_groups,
    make_splits,
    train_counts,
)
from raysynth.data.store import (
    read_classes,
    read_real,
    read_real_splits,
    read_table,
    real_exists,
    real_path,
    write_json_atomic,
    write_real,
    write_table_atomic,
)

__all__ = [
    "SPLIT_NAMES",
    "ImageSet",
    "Splits",
    "decode_png",
    "encode_png",
    "load_dataset",
    "long_tail_counts",
    "long_tail_groups",
    "make_splits",
    "read_classes",
    "read_real",
    "read_real_splits",
    "read_table",
    "real_exists",
    "real_path",
    "real_sample_id",
    "to_tensor_array",
    "train_counts",
    "write_json_atomic",
    "write_real",
    "write_table_atomic",
]
