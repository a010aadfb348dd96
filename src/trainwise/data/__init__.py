"""Datasets and the datamodule. `build_datamodule` turns a `dataset`/`source` config node into a
LightningDataModule with fixed train/val/test splits and a per-seed labelled subset."""

from __future__ import annotations

from trainwise.data.builtin import LOADERS
from trainwise.data.datamodule import ImageTensors, TensorDataModule
from trainwise.errors import UserError

__all__ = ["ImageTensors", "TensorDataModule", "build_datamodule", "dataset_names"]


def dataset_names() -> list[str]:
    return sorted(LOADERS)


def build_datamodule(
    data_cfg, seed: int, input_shape: tuple[int, int] | None = None, min_train_batches: int = 1
) -> TensorDataModule:
    """input_shape (channels, image_size) forces the images to what a pretrained model expects;
    min_train_batches makes each epoch of a tiny training set several passes."""
    name = data_cfg.name
    if name not in LOADERS:
        raise UserError(f"dataset name {name!r} is unknown; choose one of: {', '.join(dataset_names())}")
    images = LOADERS[name](data_cfg)
    channels, size = input_shape or (images.images.shape[1], data_cfg.image_size)
    return TensorDataModule(images.to_input(channels, size), data_cfg, seed, min_train_batches)
