"""Batches of indices for tensors held in memory.

Hand-written because torch's samplers draw each epoch's order from one running generator, so a run resumed
from a checkpoint would see a different order than the run it continues. Here the order of epoch e depends
only on (seed, e): Lightning calls `set_epoch` before every epoch, and a resumed run matches an
uninterrupted one exactly.
"""

from __future__ import annotations

import torch


class EpochBatches:
    """Yields index tensors of `batch_size` (the last one smaller); shuffled per (seed, epoch) if asked."""

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool):
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        yield from order.split(self.batch_size)
