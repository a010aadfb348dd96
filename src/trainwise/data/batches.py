"""Batches of indices for tensors held in memory.

Hand-written because torch's samplers draw each epoch's order from one running generator, so a run resumed
from a checkpoint would see a different order than the run it continues. Here the order of epoch e depends
only on (seed, e): Lightning calls `set_epoch` before every epoch, and a resumed run matches an
uninterrupted one exactly.

`min_batches` makes an epoch of a tiny training set several shuffled passes, so a budget of optimizer steps is
met in a few epochs instead of hundreds (each epoch costs a validation and a checkpoint).
"""

from __future__ import annotations

import torch


class EpochBatches:
    """Yields index tensors of `batch_size` (a pass's last one may be smaller); shuffled per (seed, epoch) if
    asked; as many whole passes as it takes to yield at least `min_batches`."""

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool, min_batches: int = 1):
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        per_pass = -(-size // batch_size)
        self.passes = max(1, -(-min_batches // per_pass)) if shuffle else 1
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.passes * -(-self.size // self.batch_size)

    def __iter__(self):
        if not self.shuffle:
            yield from torch.arange(self.size).split(self.batch_size)
            return
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        for _ in range(self.passes):
            yield from torch.randperm(self.size, generator=generator).split(self.batch_size)
