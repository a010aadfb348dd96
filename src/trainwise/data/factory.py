"""`build_datamodule`: a `dataset`/`source` config node -> a LightningDataModule with fixed train/val/test splits
and a per-seed labelled subset."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from trainwise.config import augment_name

# The built-in loaders register themselves on import; the real datasets' modules are cheap to import
# (torchvision and PIL load inside their loaders).
from trainwise.data import builtin, imagefolder, torchvision_sets  # noqa: F401
from trainwise.data.datamodule import ImageTensors, ResizedImages, TensorDataModule
from trainwise.data.imagefolder import ImageFiles
from trainwise.data.registry import dataset_names, get_loader
from trainwise.data.storage import Decode, RowSubset, memory_budget, place_files
from trainwise.errors import UserError


def build_datamodule(
    data_cfg, seed: int, input_shape: tuple[int, int] | None = None, min_train_batches: int = 1, preprocess=None
) -> TensorDataModule:
    """The datamodule for `data_cfg` (its `name` picks the registered loader).

    input_shape (channels, image_size) forces the images to what a pretrained model expects; min_train_batches
    makes each epoch of a tiny training set several passes; preprocess (models.preprocess.Preprocess): the
    model's crop percentage and interpolation, for the imagenet recipe. Raises UserError for an unknown name, or
    data that is missing or too small for its splits. `datamodule.storage` says where the images are kept
    (memory, disk_cache or decode; see trainwise.data.storage)."""
    loader = get_loader(data_cfg.name)
    if loader is None:
        raise UserError(f"dataset name {data_cfg.name!r} is unknown; choose one of: {', '.join(dataset_names())}")
    data = loader(data_cfg)
    native = (int(data.images.shape[1]), int(data.images.shape[-1]))
    channels, size = input_shape or (native[0], int(data_cfg.image_size))
    imagenet = augment_name(data_cfg) == "imagenet"
    crop_pct = preprocess.crop_pct if preprocess is not None else 0.875
    interpolation = preprocess.interpolation if preprocess is not None else "bilinear"
    # The imagenet recipe keeps more than the model sees: training crops at random from it, evaluation keeps
    # the center (timm's scale size: floor(image_size / crop_pct)).
    stored = math.floor(size / crop_pct) if imagenet else size
    if isinstance(data.images, ImageFiles):
        decode = Decode(channels, stored, "crop" if imagenet else "squash", interpolation,
                        "float32" if data.images.deep else "uint8")  # fmt: skip
        images, storage, bad = place_files(data.images, data_cfg, decode)
        skipped = [data.images.paths[i] for i in bad]
        data = replace(data, images=images) if not bad else _without(data, images, bad)
    else:
        data, storage = _resized(data, channels, stored, data_cfg)
        skipped = []
    datamodule = TensorDataModule(data, data_cfg, seed, min_train_batches, image_size=size)
    datamodule.native_shape = native  # (channels, size) as loaded, before a foundation's input shape was forced
    datamodule.storage = storage
    datamodule.skipped = skipped  # unreadable files left out (dataset.skip_bad_images=true)
    if skipped:
        names = ", ".join(str(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(f"warning: skipped {len(skipped)} image(s) that cannot be read ({names}); the run logs them in "
              "data/skipped_images.txt", flush=True)  # fmt: skip
    return datamodule


def _without(data: ImageTensors, images, bad: list[int]) -> ImageTensors:
    """The set without the rows of unreadable files: labels and split masks follow."""
    keep = np.setdiff1d(np.arange(len(data.labels)), np.asarray(bad, dtype=np.int64))
    rows = torch.from_numpy(keep)
    images = images[rows] if isinstance(images, torch.Tensor) else RowSubset(images, keep)
    masks = {k: (getattr(data, k)[rows] if getattr(data, k) is not None else None) for k in ("test_mask", "val_mask")}
    return replace(data, images=images, labels=data.labels[rows], **masks)


def _resized(data: ImageTensors, channels: int, size: int, data_cfg) -> tuple[ImageTensors, str]:
    """A loaded set at the input shape: resized once in memory when that fits the memory budget, else per batch
    (a 32-px set resized for a 224-px foundation grows 49-fold)."""
    itemsize = data.images.element_size()
    nbytes = len(data.images) * channels * size * size * itemsize
    if tuple(data.images.shape[1:]) == (channels, size, size) or nbytes <= memory_budget(data_cfg):
        return data.to_input(channels, size), "memory"
    return replace(data, images=ResizedImages(data.images, channels, size)), "resized_per_batch"


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
