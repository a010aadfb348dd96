"""Batches of indices for tensors held in memory.

Hand-written because torch's samplers draw each epoch's order from one running generator, so a run resumed
from a checkpoint would see a different order than the run it continues. Here the order of epoch e depends
only on (seed, e): Lightning calls `set_epoch` before every epoch, and a resumed run matches an
uninterrupted one exactly.

`min_batches` makes an epoch of a tiny training set several shuffled passes, so a budget of optimizer steps is
met in a few epochs instead of hundreds (each epoch costs a validation and a checkpoint).

Under DDP (`world_size` ranks) each rank takes every world_size-th index of the same permutation, so the ranks
see disjoint samples. Every rank must run the same number of steps, so a shuffled pass drops its last
`size % world_size` samples (a different few each epoch); evaluation keeps them all (uneven is fine there). A split
smaller than world_size (a rank with nothing) is a UserError.
"""

from __future__ import annotations

import torch

from trainwise.errors import UserError

FRACTION_OF = {"train": "dataset.train_fraction", "val": "dataset.val_fraction", "test": "dataset.test_fraction"}


class EpochBatches:
    """Yields index tensors of `batch_size` (a pass's last one may be smaller); shuffled per (seed, epoch) if
    asked; as many whole passes as it takes to yield at least `min_batches`; only this rank's share."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        shuffle: bool,
        min_batches: int = 1,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        numbered: bool = False,
    ):
        if 0 < size < world_size:
            # A rank without a sample would train nothing (or evaluate an empty batch) while the others wait for it.
            raise UserError(
                f"the {split} split has {size} image{'s' if size != 1 else ''}, fewer than the {world_size} DDP ranks "
                f"(each rank needs at least one); run on fewer devices (accelerator.devices=...) or make the split "
                f"larger (more images, or a larger {FRACTION_OF.get(split, split)})"
            )
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.numbered = numbered  # yield (epoch, batch number, indices): a worker then knows which draws are its
        self.passes = max(1, -(-min_batches // self._batches_per_pass())) if shuffle else 1
        self.epoch = 0

    def _share(self) -> int:
        """Samples this rank gets per pass."""
        if self.shuffle:
            return self.size // self.world_size
        return len(range(self.rank, self.size, self.world_size))

    def _batches_per_pass(self) -> int:
        return max(1, -(-self._share() // self.batch_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.passes * -(-self._share() // self.batch_size)

    def __iter__(self):
        if not self.shuffle:
            yield from torch.arange(self.rank, self.size, self.world_size).split(self.batch_size)
            return
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        kept = self.size - self.size % self.world_size
        number = 0
        for _ in range(self.passes):
            order = torch.randperm(self.size, generator=generator)[:kept]
            for indices in order[self.rank :: self.world_size].split(self.batch_size):
                yield (self.epoch, number, indices) if self.numbered else indices
                number += 1
