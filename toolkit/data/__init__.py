"""The data layer: folders and splits, decoding and the image cache, augmentation, the demo set.

`folders` finds the images and splits them (validation selects, test is held out);
`imaging` decodes one file exactly as training and the runtime do; `cache` keeps the
decoded, resized images as memory-mapped arrays; `augment` is the training-only warp;
`demo` writes the synthetic demo set. Nothing here imports TensorFlow.
"""

from toolkit.data.cache import ImageArrays, SkippedFile, decode_all, load_split_images
from toolkit.data.folders import (
    DataReport,
    DatasetSplit,
    LabelledFile,
    LoadedDataset,
    SplitOptions,
    build_data_report,
    discover_dataset,
    load_dataset,
    load_labelled_folder,
    require_images_per_class,
    stratified_sample,
    write_data_report,
)

__all__ = [
    "DataReport",
    "DatasetSplit",
    "ImageArrays",
    "LabelledFile",
    "LoadedDataset",
    "SkippedFile",
    "SplitOptions",
    "build_data_report",
    "decode_all",
    "discover_dataset",
    "load_dataset",
    "load_labelled_folder",
    "load_split_images",
    "require_images_per_class",
    "stratified_sample",
    "write_data_report",
]
