"""A LightningDataModule over decoded images: a tensor in memory (uint8 for 8-bit images), or for sets beyond the
memory budget a disk cache or the files themselves (trainwise.data.storage), read a batch of indices at a time.

On a GPU the split tensors move to the device once, when they fit (`dataset.device_resident`), so a batch is an
index into device memory: no per-step host-to-device copy and no DataLoader workers. Every batch becomes float in
[0, 1] on the device it trains on; training batches are augmented there, whole batches at a time
(`dataset.augment`, see trainwise.data.augment), and evaluation batches of the imagenet recipe center-cropped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset

from trainwise.config import augment_name, augment_pad
from trainwise.data.augment import BatchAugment, center_crop
from trainwise.data.batches import EpochBatches
from trainwise.errors import UserError

log = logging.getLogger("trainwise")

# device_resident=auto: the data moves to the GPU when it takes less than this share of the free GPU memory; the
# rest is left for the model, its activations and the optimizer state.
RESIDENT_SHARE_OF_FREE = 0.25


@dataclass
class ImageTensors:
    # (N, C, H, W): uint8 (0-255) or float32 in [0, 1]; or, for an image folder, its ImageFiles (undecoded) and
    # after build_datamodule a storage.CachedImages / DecodedFiles: anything indexed by a tensor of indices.
    images: torch.Tensor
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]
    # Optional predefined splits (bool, (N,)), e.g. a dataset's official test set or an image folder's val/ folder.
    # Where one is None, TensorDataModule draws that split with test_fraction / val_fraction instead.
    test_mask: torch.Tensor | None = None
    val_mask: torch.Tensor | None = None

    def to_input(self, channels: int, size: int) -> ImageTensors:
        """Resize and convert channels to what a model expects (grayscale <-> colour), keeping the dtype (a few
        thousand images at a time, so a uint8 set never has a float copy of itself)."""
        images = self.images
        if tuple(images.shape[1:]) == (channels, size, size):
            return self
        out = torch.empty((len(images), channels, size, size), dtype=images.dtype)
        for start in range(0, len(images), 4096):
            out[start : start + 4096] = adapt_images(images[start : start + 4096], channels, size)
        return replace(self, images=out)


def adapt_images(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """A batch resized (bilinear, antialiased) to size x size with `channels` channels, in its own dtype."""
    dtype = images.dtype
    images = images.float() / 255.0 if dtype == torch.uint8 else images
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if images.shape[1] != channels:
        gray = images.mean(dim=1, keepdim=True)
        images = gray.expand(-1, channels, -1, -1).contiguous() if channels > 1 else gray
    images = images.clamp(0, 1)
    return (images * 255.0).round().to(torch.uint8) if dtype == torch.uint8 else images


class ResizedImages:
    """A set in memory resized to the input shape a batch at a time (in DataLoader workers), where the resized set
    would not fit the memory budget."""

    def __init__(self, images: torch.Tensor, channels: int, size: int):
        self.images, self.channels, self.size = images, channels, size
        self.shape = (len(images), channels, size, size)
        self.dtype = images.dtype

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.images.element_size()

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return adapt_images(self.images[index], self.channels, self.size)

    def digest(self) -> str:
        import hashlib

        hasher = hashlib.sha256(str(self.shape).encode())
        _hash_in_place(hasher, self.images.numpy())
        return hasher.hexdigest()


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as float32 in [0, 1] (on whatever device they are); float images as they are."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


class IndexedImages(Dataset):
    """One split: `dataset[batch_positions]` is the batch (images, labels) of those positions of the split, read
    from the whole set's images with one indexing (no per-sample collation, no copy of the split). With `augment`
    (a training split read by DataLoader workers), the key is (epoch, batch number, positions) and the worker
    augments the batch it read: the draws are the batch's own, so where the work runs changes no pixel."""

    def __init__(self, images, labels: torch.Tensor, indices: torch.Tensor, augment=None):
        self.images, self.labels, self.indices, self.augment = images, labels, indices, augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        if self.augment is None:
            rows = self.indices[key]
            return self.images[rows], self.labels[rows]
        epoch, number, positions = key
        rows = self.indices[positions]
        return self.augment(self.images[rows], epoch, number), self.labels[rows]


def _split(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, split: str, class_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of `indices` into (rest, part); unstratified when the part (or the rest) is smaller than the
    number of classes. `split` ('test' or 'val') and the class names are for the errors users can cause."""
    if fraction <= 0:
        return indices, indices[:0]
    n_part = max(1, round(fraction * len(indices)))
    if n_part >= len(indices):
        raise UserError(
            f"dataset.{split}_fraction={fraction} takes all {len(indices)} remaining images for the {split} split and "
            f"leaves none to train on; lower dataset.{split}_fraction or add images"
        )
    classes, counts = np.unique(labels[indices], return_counts=True)
    stratified = min(n_part, len(indices) - n_part) >= len(classes)
    if stratified and counts.min() < 2:
        name = class_names[int(classes[counts.argmin()])]
        raise UserError(
            f"dataset: class {name!r} has only 1 image to draw the {split} split from (dataset.{split}_fraction="
            f"{fraction}, stratified by class); add images to that class (at least 2, 3 when both val and test are "
            f"drawn), or for an image folder put held-out images in a {split}/ folder beside train/"
        )
    stratify = labels[indices] if stratified else None
    rest, part = train_test_split(indices, test_size=n_part, random_state=seed, stratify=stratify)
    return np.sort(rest), np.sort(part)


def labelled_subset(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """`fraction` of each class (at least one image per class), drawn with `seed`."""
    if fraction >= 1.0:
        return indices
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels[indices]):
        members = indices[labels[indices] == cls]
        k = max(1, round(fraction * len(members)))
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def _split_budget(
    budget: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A labelled budget split into (train, val): the validation images a run selects its checkpoint on are
    labelled images too, so they come out of the same budget. A budget too small to give the validation part one
    image per class gets no validation split: the run trains its fixed recipe and tests its last epoch."""
    n_val = round(val_fraction * len(budget))
    if n_val < num_classes or len(budget) - n_val < 1:
        return budget, budget[:0]
    classes, counts = np.unique(labels[budget], return_counts=True)
    stratify = labels[budget] if counts.min() >= 2 and len(budget) - n_val >= len(classes) else None
    train, val = train_test_split(budget, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(val)


def _hash_in_place(hasher, array: np.ndarray) -> None:
    """Feed `array`'s bytes in C order to `hasher` (as `array.tobytes()` would) without copying the whole array."""
    if array.flags.c_contiguous:
        hasher.update(array.reshape(-1).view(np.uint8))  # a view of the same memory
    elif array.ndim > 1:
        for part in array:  # strided: one sub-array at a time
            _hash_in_place(hasher, part)
    else:
        hasher.update(array.tobytes())


def _mask(mask: torch.Tensor | None, n: int) -> np.ndarray | None:
    if mask is None:
        return None
    mask = mask.numpy().astype(bool)
    if mask.shape != (n,):
        raise ValueError(f"a split mask must have shape ({n},), got {mask.shape}")
    return mask


class TensorDataModule(pl.LightningDataModule):
    """A fixed test split (by `split_seed`, identical for every run) and a labelled budget drawn per `seed`:
    `train_fraction` of the other images, of each class. Below 1 (and with `val_from_labelled`, the default) the
    validation images come out of that budget, `val_fraction` of it; at 1, or with `val_from_labelled: false`,
    validation is a fixed split by `split_seed` and the budget is drawn from the rest. Batches are sliced from
    the tensors, not collated per sample. A split the data predefines (`test_mask`, `val_mask`) is used as it
    is, and the training pool is what is in neither; the val mask may equal the test mask (validating on the
    test split, as some examples do)."""

    def __init__(self, data: ImageTensors, cfg, seed: int, min_train_batches: int = 1, image_size: int | None = None):
        super().__init__()
        self.data = data
        self.min_train_batches = min_train_batches  # tiny training sets: several passes per epoch
        self.batch_size = int(cfg.batch_size)
        in_memory = isinstance(data.images, torch.Tensor)
        workers = cfg.get("num_workers", "auto")
        # auto: slicing a tensor in memory needs no workers; reading a disk cache or decoding files does.
        self.num_workers = (0 if in_memory else min(4, os.cpu_count() or 1)) if workers == "auto" else int(workers)
        self.seed = seed
        self.augment = augment_name(cfg)  # none | crop_flip | imagenet
        self.augment_pad = augment_pad(cfg)  # crop_flip's padding, else None
        # The size the model sees; the stored images may be larger (the imagenet recipe crops them).
        self.image_size = int(image_size or data.images.shape[-1])
        self.augmenter = BatchAugment(self.augment, self.image_size, seed, self.augment_pad)
        self.channels = int(data.images.shape[1])
        self.features_cached = False  # set by cache_features: batches are features, used as they are
        self.device_resident = str(cfg.get("device_resident", "auto")).lower()
        if self.device_resident not in ("auto", "true", "false"):
            raise UserError(f"dataset.device_resident={self.device_resident!r} must be auto, true or false")
        self.resident_device: torch.device | None = None  # set by setup(): where the split tensors live
        labels = data.labels.numpy()
        everything = np.arange(len(labels))
        test_mask, val_mask = _mask(data.test_mask, len(labels)), _mask(data.val_mask, len(labels))
        if test_mask is None:
            candidates = everything if val_mask is None else everything[~val_mask]
            rest, self.test_idx = _split(
                candidates, labels, cfg.get("test_fraction", 0.0), cfg.split_seed, "test", data.class_names
            )
        else:
            rest, self.test_idx = everything[~test_mask], everything[test_mask]
        fraction = float(cfg.train_fraction)
        if val_mask is not None:  # the user's own validation images, whatever the fraction
            train_pool, self.val_idx = rest[~val_mask[rest]], everything[val_mask]
            self.train_idx = labelled_subset(train_pool, labels, fraction, seed)
        elif fraction < 1 and cfg.get("val_from_labelled", True):
            budget = labelled_subset(rest, labels, fraction, seed)
            self.train_idx, self.val_idx = _split_budget(budget, labels, cfg.val_fraction, seed, self.num_classes)
        else:
            train_pool, self.val_idx = _split(rest, labels, cfg.val_fraction, cfg.split_seed, "val", data.class_names)
            self.train_idx = labelled_subset(train_pool, labels, fraction, seed)

    @property
    def num_classes(self) -> int:
        return len(self.data.class_names)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(channels, image_size)."""
        return self.channels, self.image_size

    def digest(self) -> str:
        """A short content hash of the images and labels (what a run trained and was tested on); for images on disk,
        of the files' list, sizes and modification times and how they are decoded (hashing them would read them)."""
        import hashlib

        hasher = hashlib.sha256()
        if isinstance(self.data.images, torch.Tensor):
            _hash_in_place(hasher, self.data.images.numpy())
        else:
            hasher.update(self.data.images.digest().encode())
        _hash_in_place(hasher, self.data.labels.numpy())
        return hasher.hexdigest()[:16]

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split."""
        labels = self.data.labels.numpy()
        names = self.data.class_names
        splits = {"train": self.train_idx, "val": self.val_idx, "test": self.test_idx}
        return {
            split: {names[c]: int(n) for c, n in enumerate(np.bincount(labels[idx], minlength=len(names)))}
            for split, idx in splits.items()
        }

    @property
    def has_validation(self) -> bool:
        """False when the labelled budget was too small for a validation split (see _split_budget)."""
        return len(self.val_idx) > 0

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_idx), "val": len(self.val_idx), "test": len(self.test_idx)}

    def steps_per_epoch(self, world_size: int = 1) -> int:
        train = EpochBatches(
            len(self.train_idx), self.batch_size, self.seed, True, self.min_train_batches, 0, world_size
        )
        return len(train)

    def setup(self, stage: str) -> None:
        self.place_on(self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu"))

    def place_on(self, device: torch.device) -> None:
        """Decide whether the loaders serve batches from `device` memory (see dataset.device_resident)."""
        device = torch.device(device)
        self.resident_device = device if self._resident_on(device) else None
        if device.type != "cpu":
            where = f"held on {device}" if self.resident_device else "streamed from host memory"
            log.info("data: %.1f MB of tensors, %s", self._split_bytes() / 2**20, where)

    def _resident_on(self, device: torch.device) -> bool:
        if device.type == "cpu" or self.device_resident == "false" or not isinstance(self.data.images, torch.Tensor):
            return False  # on CPU the tensors already are where the model runs; a disk cache is too large
        if self.device_resident == "true":
            return True
        if device.type != "cuda":
            return False
        free, _total = torch.cuda.mem_get_info(device)
        return self._split_bytes() < RESIDENT_SHARE_OF_FREE * free

    def _split_bytes(self) -> int:
        """Bytes the three splits take (images and labels)."""
        share = sum(self.sizes().values()) / max(1, len(self.data.labels))
        return int(share * (self.data.images.nbytes + self.data.labels.nbytes))

    def augment_batch(self, images: torch.Tensor, epoch: int, batch: int, rank: int = 0) -> torch.Tensor:
        """dataset.augment applied to one training batch (as stored: uint8 or float), on its device, drawn from
        (seed, epoch, batch, rank); float in [0, 1] out."""
        return to_float(self.augmenter(images, epoch, batch, rank))

    def eval_view(self, images: torch.Tensor) -> torch.Tensor:
        """A batch as the model sees it outside training: float in [0, 1], center-cropped to image_size."""
        return center_crop(to_float(images), self.image_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # After the batch reaches the device: uint8 -> float there (a quarter of the bytes to copy), then the
        # training augmentation. The batch's index within the epoch is the count of batches Lightning has made
        # ready so far (it restores that count on resume; this hook runs just before it is incremented).
        if self.features_cached:
            return batch
        trainer = self.trainer
        images, labels = batch
        if trainer is None or not trainer.training:
            return self.eval_view(images), labels
        batch_idx = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return self.train_view(images, trainer.current_epoch, batch_idx, trainer.global_rank), labels

    def train_view(self, images: torch.Tensor, epoch: int, batch: int, rank: int = 0) -> torch.Tensor:
        """A batch from the training loader as the model trains on it: augmented here unless the loader's workers
        did it already."""
        return to_float(images) if self.augmented_in_workers else self.augment_batch(images, epoch, batch, rank)

    def _loader(self, indices: np.ndarray, shuffle: bool, split: str) -> DataLoader:
        idx = torch.from_numpy(indices)
        images, labels = self.data.images, self.data.labels
        num_workers = self.num_workers
        if self.resident_device is not None:
            # Once per loader (per fit or test), not per step. No workers: a batch is an index into device memory
            # (and CUDA tensors cannot be shared with forked worker processes).
            images, labels = images[idx].to(self.resident_device), labels[idx].to(self.resident_device)
            idx = torch.arange(len(idx), device=self.resident_device)
            num_workers = 0
        # Index the images with a whole batch of indices at once: no per-sample collation. Under DDP each rank
        # gets its own share (the Trainer runs with use_distributed_sampler=False).
        min_batches = self.min_train_batches if shuffle else 1
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        in_workers = split == "train" and self.augmented_in_workers
        augment = partial(self.augmenter, rank=rank) if in_workers else None
        dataset = IndexedImages(images, labels, idx, augment)
        batches = EpochBatches(
            len(dataset), self.batch_size, self.seed, shuffle, min_batches, rank, world_size, split, in_workers
        )
        pin = self.resident_device is None and torch.cuda.is_available() and self._on_gpu()
        return DataLoader(
            dataset, sampler=batches, batch_size=None, num_workers=num_workers, pin_memory=pin,
            persistent_workers=num_workers > 0,
        )  # fmt: skip

    @property
    def augmented_in_workers(self) -> bool:
        """Training batches read by worker processes (images streaming from disk) on a CPU are augmented there, in
        parallel; on a GPU (where the data may be resident and read without workers), or read in this process,
        after they reach the device (on_after_batch_transfer)."""
        return self.num_workers > 0 and not self._on_gpu()

    def _on_gpu(self) -> bool:
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, shuffle=True, split="train")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_idx, shuffle=False, split="val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_idx, shuffle=False, split="test")
