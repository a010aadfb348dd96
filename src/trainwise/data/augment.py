"""Training-time augmentation of whole batches on the device they sit on.

`dataset.augment`:
- `none` (default): batches are used as they are.
- `crop_flip`: the CIFAR recipe, per image: a random `image_size` crop of the image zero-padded by
  `dataset.augment_pad` pixels on every side, then a horizontal flip with probability 0.5. The same distribution as
  torchvision's `v2.RandomCrop(size, padding=pad)` + `v2.RandomHorizontalFlip()` applied to each sample
  (`per_sample_transform`, kept for comparisons), but drawn for a whole (N, C, H, W) batch at once.
- `imagenet`: the natural-image recipe of timm's training script: training images are a random-resized crop
  (area 8-100 % of the image, aspect ratio 3/4-4/3, as torchvision's `RandomResizedCrop`) resized to `image_size`,
  flipped with probability 0.5; evaluation images are the center `image_size` crop of the image resized (aspect
  ratio kept) to `image_size / crop_pct` (the model's crop percentage, see models/preprocess.py). Images are
  stored at that larger size, so the crop reads real pixels (see build_datamodule). The crop runs before the
  images become float (on CPU, torchvision's uint8 resize kernel is the fast one).

Written by hand: torchvision's v2 transforms draw one set of parameters per call, so a batch passed to them shares
a single crop and a single flip; a DataLoader calling them per sample is the per-sample Python work this avoids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def crop_flip_params(
    n: int, pad: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image draws: top and left offsets into the padded image, each uniform on [0, 2*pad] (as RandomCrop),
    and whether to flip (probability 0.5)."""
    top, left = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return top, left, flip


def apply_crop_flip(
    images: torch.Tensor, pad: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Crop each image of the zero-padded batch at (top[i], left[i]) to the original size, flipped where flip[i]:
    one gather over the batch (flipping a crop reads its columns right to left). A gather along the flattened
    pixels rather than 4-D advanced indexing, which measured 30-100x slower on a busy 2-core CPU."""
    n, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)).flatten(2)  # (N, C, (H + 2 pad) * (W + 2 pad))
    rows = top[:, None] + torch.arange(height, device=images.device)  # (N, H)
    cols = torch.arange(width, device=images.device)
    cols = left[:, None] + torch.where(flip[:, None], width - 1 - cols, cols)  # (N, W)
    pixels = (rows[:, :, None] * (width + 2 * pad) + cols[:, None, :]).flatten(1)  # (N, H * W)
    return padded.gather(2, pixels[:, None, :].expand(n, channels, -1)).view(n, channels, height, width)


def crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, each image its own draw, on images' device."""
    top, left, flip = crop_flip_params(len(images), pad, generator, images.device)
    return apply_crop_flip(images, pad, top, left, flip)


def random_resized_crop_flip(
    images: torch.Tensor,
    size: int,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """torchvision's RandomResizedCrop(size) + RandomHorizontalFlip() with a draw per image, for a batch (uint8 or
    float): the boxes are drawn as `RandomResizedCrop.get_params` draws them (10 tries per image, else the whole
    image), all at once; each box is then cropped and resized (bilinear, antialiased) by torchvision's own
    `resized_crop`, which on CPU has a fast uint8 kernel (about 9x roi_align's speed on float, measured)."""
    from torchvision.transforms.v2 import functional as TF

    n, _channels, height, width = images.shape
    device = generator.device if generator is not None else images.device
    tries = 10
    area = height * width * torch.empty(n, tries, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, tries, device=device).uniform_(
        float(np.log(ratio[0])), float(np.log(ratio[1])), generator=generator
    )
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1, device=device))
    pick = first.clamp(min=0)[:, None]
    w = torch.where(first >= 0, w.gather(1, pick)[:, 0], torch.full((n,), float(width), device=device))
    h = torch.where(first >= 0, h.gather(1, pick)[:, 0], torch.full((n,), float(height), device=device))
    top = (torch.rand(n, generator=generator, device=device) * (height - h + 1)).floor()
    left = (torch.rand(n, generator=generator, device=device) * (width - w + 1)).floor()
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    boxes = torch.stack([top, left, h, w], 1).long().tolist()  # (one host sync per batch)
    if images.is_cuda and images.dtype == torch.uint8:
        images = images.float().div_(255.0)  # CUDA's antialiased resize takes floats
    crops = torch.stack([
        TF.resized_crop(image, box_top, box_left, box_h, box_w, [size, size], antialias=True)
        for image, (box_top, box_left, box_h, box_w) in zip(images, boxes, strict=True)
    ])  # fmt: skip
    return torch.where(flip.to(crops.device)[:, None, None, None], crops.flip(-1), crops)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size crop, placed as torchvision's CenterCrop places it."""
    height, width = images.shape[-2:]
    if height == size and width == size:
        return images
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def batch_generator(device: torch.device, seed: int, epoch: int, batch: int, rank: int = 0) -> torch.Generator:
    """A generator on `device` whose draws depend only on (seed, epoch, batch index, rank), so a resumed run
    augments each batch as the uninterrupted run did. numpy's SeedSequence mixes the four numbers into a seed
    (adjacent tuples get unrelated streams)."""
    words = [seed % 2**64, epoch, batch, rank]  # SeedSequence takes no negative numbers
    state = np.random.SeedSequence(words).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


@dataclass(frozen=True)
class BatchAugment:
    """dataset.augment for one run: `(images, epoch, batch, rank)` -> the augmented batch, as stored (uint8 or
    float), drawn from those four numbers and the seed. Small and picklable: DataLoader workers receive it."""

    name: str  # none | crop_flip | imagenet
    image_size: int
    seed: int
    pad: int | None = None  # crop_flip's padding

    def __call__(self, images: torch.Tensor, epoch: int, batch: int, rank: int = 0) -> torch.Tensor:
        if self.name == "none":
            return center_crop(images, self.image_size)
        generator = batch_generator(images.device, self.seed, epoch, batch, rank)
        if self.name == "imagenet":
            return random_resized_crop_flip(images, self.image_size, generator)
        return crop_flip(images, self.pad, generator)


def per_sample_transform(size: int, pad: int):
    """The torchvision equivalent for one (C, H, W) image (what a DataLoader-per-sample pipeline would apply)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(size, padding=pad), v2.RandomHorizontalFlip()])
