"""The built-in datasets, which need no network: scikit-learn's digits and the generated glyphs."""

from __future__ import annotations

import numpy as np
import torch

from trainwise.data.datamodule import ImageTensors
from trainwise.data.registry import register_dataset
from trainwise.paths import cache_dir


@register_dataset("digits")
def load_digits(cfg) -> ImageTensors:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    return ImageTensors(images, torch.from_numpy(bunch.target.astype(np.int64)), [str(c) for c in bunch.target_names])


@register_dataset("glyphs")
def load_glyphs(cfg) -> ImageTensors:
    from trainwise.data.glyphs import load_glyphs as cached_glyphs

    images, labels, names = cached_glyphs(
        cache_dir(cfg.get("cache_dir")) / "glyphs", cfg.num_per_class, cfg.generator_seed, cfg.image_size
    )
    tensor = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    return ImageTensors(tensor, torch.from_numpy(labels.astype(np.int64)), list(names))
