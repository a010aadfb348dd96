"""Image folders beyond memory, at 224 px: trainwise's streaming path against a plain torchvision ImageFolder +
DataLoader with the same transforms, and the disk cache of decoded images against decoding every epoch.

- `folder_stream_images_per_second`: training batches of the imagenet recipe (random-resized crop to 224 + flip,
  float in [0, 1]) per second, an epoch of trainwise's default streaming path (memory_budget_mb exceeded: read from
  the disk cache, which the sweep's first run built) / an epoch of the torchvision pipeline (ImageFolder with
  RandomResizedCrop + RandomHorizontalFlip + PILToTensor per sample, the same number of workers). The key is the
  ratio; the absolute rates, the cache's one-time build and the decode-per-batch path (dataset.cache=false) are
  detail keys.
- `folder_cache_speedup`: the same batches per second read from the disk cache / decoded from the JPEGs each epoch.

The folder: 298x224 JPEGs (quality 90, a 224-px folder of 4:3 photos) of random smooth textures, written here;
nothing is downloaded. `folder_photo_*`: the same figures on 1600x1200 JPEGs (camera-sized photos), where decoding
dominates and trainwise's PIL draft mode decodes at a reduced scale.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from harness import compose, interleave

WORKERS = 2
BATCH = 64


def make_folder(root: Path, images: int, size: tuple[int, int] = (298, 224), classes: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def _rate(batches, count) -> float:
    """Images per second over one pass, after a first pass that starts the workers and warms the page cache."""
    for _ in batches():
        pass
    started, seen = time.perf_counter(), 0
    for batch in batches():
        seen += count(batch)
    return seen / (time.perf_counter() - started)


def _trainwise(root: Path, cache: bool, cache_dir: Path):
    from trainwise.data import build_datamodule

    cfg = compose(
        "dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=224", "dataset.augment=imagenet",
        f"dataset.batch_size={BATCH}", f"dataset.num_workers={WORKERS}", "dataset.memory_budget_mb=0",
        f"dataset.cache={str(cache).lower()}", f"dataset.cache_dir={cache_dir}", "dataset.test_fraction=0",
        "dataset.val_fraction=0",
    )  # fmt: skip
    dm = build_datamodule(cfg.dataset, seed=0)
    loader = dm.train_dataloader()
    epoch = iter(range(1000))

    def batches():
        e = next(epoch)
        loader.sampler.set_epoch(e)
        for i, (images, _labels) in enumerate(loader):
            yield dm.train_view(images, e, i)  # as the Trainer's batches are (augmented by the workers)

    return dm.storage, batches


def _torchvision(root: Path):
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(), v2.PILToTensor()])
    dataset = ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS, persistent_workers=True
    )

    def batches():
        for images, _labels in loader:
            yield images.float().div_(255.0)  # what a model takes, as trainwise's batches are

    return batches


def folder_figures(tmp: Path, reps: int, quick: bool) -> dict[str, float]:
    root = make_folder(tmp / "folder224", 256 if quick else 768)
    count = len  # images in a batch
    _storage, decoded = _trainwise(root, cache=False, cache_dir=tmp / "cache")
    started = time.perf_counter()
    storage, cached = _trainwise(root, cache=True, cache_dir=tmp / "cache")
    build_s = time.perf_counter() - started
    assert storage == "disk_cache", storage
    peer = _torchvision(root)
    peer_rate, cached_rate = interleave(reps, lambda: _rate(peer, count), lambda: _rate(cached, count))
    decoded_rate, cached_again = interleave(reps, lambda: _rate(decoded, count), lambda: _rate(cached, count))
    photos = make_folder(tmp / "photos", 64 if quick else 192, size=(1600, 1200))
    _storage, photo_decoded = _trainwise(photos, cache=False, cache_dir=tmp / "cache")
    _storage, photo_cached = _trainwise(photos, cache=True, cache_dir=tmp / "cache")
    photo_peer = _torchvision(photos)
    photo_peer_rate, photo_rate = interleave(
        reps, lambda: _rate(photo_peer, count), lambda: _rate(photo_decoded, count)
    )
    photo_decoded_again, photo_cached_rate = interleave(
        reps, lambda: _rate(photo_decoded, count), lambda: _rate(photo_cached, count)
    )
    return {
        "stream_ratio": cached_rate / peer_rate,
        "cache_speedup": cached_again / decoded_rate,
        "cached_images_per_second": cached_rate,
        "torchvision_images_per_second": peer_rate,
        "decoded_images_per_second": decoded_rate,
        "decoded_over_torchvision_ratio": decoded_rate / peer_rate,
        "cache_build_seconds": build_s,
        "photo_decoded_over_torchvision_ratio": photo_rate / photo_peer_rate,
        "photo_cache_speedup": photo_cached_rate / photo_decoded_again,
        "photo_cached_over_torchvision_ratio": photo_cached_rate / photo_peer_rate,
        "images": float(len(list(root.rglob("*.jpg")))),
    }
