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
    native = (int(images.images.shape[1]), int(images.images.shape[-1]))
    channels, size = input_shape or (images.images.shape[1], data_cfg.image_size)
    datamodule = TensorDataModule(images.to_input(channels, size), data_cfg, seed, min_train_batches)
    datamodule.native_shape = native  # (channels, size) as loaded, before a foundation's input shape was forced
    return datamodule


def adaptation_loss(native: tuple[int, int], used: tuple[int, int]) -> str | None:
    """What converting images of shape `native` (channels, size) to `used` throws away, in words; None when
    little is lost (the colour kept, at least a quarter of the pixels)."""
    lost = []
    if native[0] == 3 and used[0] == 1:
        lost.append("its colour")
    kept = (used[1] / native[1]) ** 2
    if kept < 0.25:
        lost.append(f"{100 * (1 - kept):.0f} % of its pixels")
    return " and ".join(lost) or None
