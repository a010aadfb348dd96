"""`build_datamodule`: a `dataset`/`source` config node -> a LightningDataModule with fixed train/val/test splits
and a per-seed labelled subset."""

from __future__ import annotations

# The built-in loaders register themselves on import; the real datasets' modules are cheap to import
# (torchvision and PIL load inside their loaders).
from trainwise.data import builtin, imagefolder, torchvision_sets  # noqa: F401
from trainwise.data.datamodule import TensorDataModule
from trainwise.data.registry import dataset_names, get_loader
from trainwise.errors import UserError


def build_datamodule(
    data_cfg, seed: int, input_shape: tuple[int, int] | None = None, min_train_batches: int = 1
) -> TensorDataModule:
    """The datamodule for `data_cfg` (its `name` picks the registered loader).

    input_shape (channels, image_size) forces the images to what a pretrained model expects; min_train_batches
    makes each epoch of a tiny training set several passes. Raises UserError for an unknown name, or data that
    is missing or too small for its splits."""
    loader = get_loader(data_cfg.name)
    if loader is None:
        raise UserError(f"dataset name {data_cfg.name!r} is unknown; choose one of: {', '.join(dataset_names())}")
    images = loader(data_cfg)
    channels, size = input_shape or (images.images.shape[1], data_cfg.image_size)
    return TensorDataModule(images.to_input(channels, size), data_cfg, seed, min_train_batches)
