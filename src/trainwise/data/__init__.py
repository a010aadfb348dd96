"""Datasets and the datamodule: `build_datamodule` turns a `dataset`/`source` config node into a
LightningDataModule; `register_dataset` adds a loader of your own."""

from trainwise.data.datamodule import ImageTensors, TensorDataModule
from trainwise.data.factory import build_datamodule
from trainwise.data.registry import dataset_names, register_dataset

__all__ = ["ImageTensors", "TensorDataModule", "build_datamodule", "dataset_names", "register_dataset"]
