"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 through torchvision's own dataset classes.

torchvision keeps its real on-disk formats, checks and downloads; each set is then held whole as one tensor
(they fit in memory) instead of being decoded image by image. The official train/test split is kept: the
test images are handed over as `test_mask`, so `test_fraction` does not apply to these sets.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainwise.data.datamodule import ImageTensors
from trainwise.data.registry import register_dataset
from trainwise.errors import UserError

log = logging.getLogger("trainwise")


@dataclass(frozen=True)
class TorchvisionSet:
    title: str  # what users call it
    cls: str  # torchvision.datasets class name
    folder: str  # where the class keeps its files, relative to root
    files: str  # the files it needs there, for the error message


SETS: dict[str, TorchvisionSet] = {
    "mnist": TorchvisionSet(
        "MNIST", "MNIST", "MNIST/raw", "train-/t10k-images-idx3-ubyte and train-/t10k-labels-idx1-ubyte"
    ),
    "fashion_mnist": TorchvisionSet(
        "Fashion-MNIST",
        "FashionMNIST",
        "FashionMNIST/raw",
        "train-/t10k-images-idx3-ubyte and train-/t10k-labels-idx1-ubyte",
    ),
    "cifar10": TorchvisionSet(
        "CIFAR-10", "CIFAR10", "cifar-10-batches-py", "data_batch_1..5, test_batch and batches.meta"
    ),
    "cifar100": TorchvisionSet("CIFAR-100", "CIFAR100", "cifar-100-python", "train, test and meta"),
}


def data_root(configured: str | None = None) -> Path:
    """Downloaded datasets: the configured folder, else $TRAINWISE_DATA, else ~/.cache/trainwise/data."""
    path = configured or os.environ.get("TRAINWISE_DATA") or "~/.cache/trainwise/data"
    return Path(path).expanduser()


def _open(spec: TorchvisionSet, root: Path, train: bool, download: bool):
    import torchvision.datasets

    folder = root / spec.folder
    try:
        return getattr(torchvision.datasets, spec.cls)(str(root), train=train, download=download)
    except (RuntimeError, OSError) as error:  # torchvision: RuntimeError when missing/corrupt; URLError et al.
        if download:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(
                f"could not download {spec.title} into {folder} ({reason}); with no network, copy its files "
                f"({spec.files}) there yourself, or set dataset.root=<folder holding {spec.folder}/>"
            ) from error
        raise UserError(
            f"{spec.title} files not found (or corrupt) in {folder}: expected {spec.files}; "
            f"set dataset.download=true to fetch them, or dataset.root=<folder holding {spec.folder}/>"
        ) from error


def _open_splits(spec: TorchvisionSet, root: Path, download: bool):
    """(train, test). Every DDP rank and every parallel job builds the datamodule: on a fresh machine each would
    download and extract the same archive into the same files at once. So a download runs under a file lock in
    `root`: one process downloads, the others wait for it and then read its files."""
    try:  # already there: read without taking the lock (root may be read-only)
        return _open(spec, root, True, False), _open(spec, root, False, False)
    except UserError:
        if not download:
            raise
    from filelock import FileLock, Timeout

    lock = FileLock(str(root / f".{spec.cls}.download.lock"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("data: waiting for another process to download %s into %s", spec.title, root)
            lock.acquire()
    except OSError as error:
        raise UserError(
            f"could not download {spec.title} into {root / spec.folder} ({error}); set dataset.root to a folder "
            f"you can write to, or copy its files ({spec.files}) there yourself"
        ) from error
    try:
        return _open(spec, root, True, True), _open(spec, root, False, True)
    finally:
        lock.release()


def _as_uint8_nchw(data) -> torch.Tensor:
    """torchvision keeps MNIST as a (N, H, W) uint8 tensor and CIFAR as a (N, H, W, C) uint8 array."""
    tensor = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
    return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)


@register_dataset(*SETS)
def load_torchvision(cfg) -> ImageTensors:
    """Both official splits as one tensor, the test images marked by `test_mask`.

    `dataset.val_on_test=true` validates on the official test split too (as the Keras examples do with
    `validation_data=(x_test, y_test)`); otherwise validation is `val_fraction` of the training split.
    """
    spec = SETS[cfg.name]
    root = data_root(cfg.get("root"))
    download = bool(cfg.get("download", True))
    train, test = _open_splits(spec, root, download)
    parts = [_as_uint8_nchw(train.data), _as_uint8_nchw(test.data)]
    n_train, n_test = len(parts[0]), len(parts[1])
    # One float tensor filled in place: the uint8 copies are the only other full-size buffers.
    images = torch.empty((n_train + n_test, *parts[0].shape[1:]), dtype=torch.float32)
    images[:n_train] = parts[0]
    images[n_train:] = parts[1]
    images.div_(255.0)
    labels = torch.cat([torch.as_tensor(train.targets), torch.as_tensor(test.targets)]).long()
    test_mask = torch.cat([torch.zeros(n_train, dtype=torch.bool), torch.ones(n_test, dtype=torch.bool)])
    val_mask = test_mask.clone() if cfg.get("val_on_test", False) else None
    return ImageTensors(images, labels, [str(c) for c in train.classes], test_mask=test_mask, val_mask=val_mask)
