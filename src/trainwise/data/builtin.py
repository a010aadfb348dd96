"""The built-in datasets, which need no network: scikit-learn's digits and the generated glyphs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from trainwise.data import imagefolder, torchvision_sets
from trainwise.data.datamodule import ImageTensors
from trainwise.paths import cache_dir


def load_digits(cfg) -> ImageTensors:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    return ImageTensors(images, torch.from_numpy(bunch.target.astype(np.int64)), [str(c) for c in bunch.target_names])


def load_glyphs(cfg) -> ImageTensors:
    from trainwise.data.glyphs import load_glyphs as cached_glyphs

    images, labels, names = cached_glyphs(
        cache_dir(cfg.get("cache_dir")) / "glyphs", cfg.num_per_class, cfg.generator_seed, cfg.image_size
    )
    tensor = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    return ImageTensors(tensor, torch.from_numpy(labels.astype(np.int64)), list(names))


# The real datasets' modules are cheap to import: torchvision and PIL load inside their loaders.
LOADERS: dict[str, Callable[..., ImageTensors]] = {
    "digits": load_digits,
    "glyphs": load_glyphs,
    **dict.fromkeys(torchvision_sets.SETS, torchvision_sets.load_torchvision),
    "imagefolder": imagefolder.load_imagefolder,
}
