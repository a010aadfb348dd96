"""The dataset digest (logged with every run) hashes the tensors in place: same value as before, no full copy."""

from __future__ import annotations

import hashlib
import tracemalloc

import torch

from helpers import compose_config
from trainwise.data import ImageTensors, TensorDataModule


def _datamodule(images: torch.Tensor, labels: torch.Tensor) -> TensorDataModule:
    cfg = compose_config("dataset.test_fraction=0", "dataset.val_fraction=0.25").dataset
    return TensorDataModule(ImageTensors(images, labels, list("abcd")), cfg, seed=0)


def _old_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """What digest() computed before (copying both tensors with tobytes()): runs logged then must still match."""
    hasher = hashlib.sha256(images.numpy().tobytes())
    hasher.update(labels.numpy().tobytes())
    return hasher.hexdigest()[:16]


def test_digest_value_is_unchanged_for_contiguous_and_strided_tensors():
    images = torch.rand(12, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(12) % 4
    assert _datamodule(images, labels).digest() == _old_digest(images, labels)
    strided = images.permute(0, 2, 3, 1)  # not contiguous: hashed in C order, as tobytes() did
    assert not strided.is_contiguous()
    assert _datamodule(strided, labels).digest() == _old_digest(strided, labels)
    changed = images.clone()
    changed[3, 1, 2, 2] += 1e-3
    assert _datamodule(changed, labels).digest() != _datamodule(images, labels).digest()


def test_digest_does_not_copy_the_images():
    images = torch.zeros(64, 1, 128, 128)  # 4 MiB
    labels = torch.arange(64) % 4
    dm = _datamodule(images, labels)
    tracemalloc.start()
    try:
        dm.digest()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < images.nbytes // 8, f"digest() allocated {peak} bytes for {images.nbytes} bytes of images"
