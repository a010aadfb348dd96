"""Head-only fine-tuning on cached features: a frozen backbone with no augmentation gives the same features every
epoch, so they are computed once (eval mode, no_grad) and the head trains on them."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch


@torch.no_grad()
def cache_features(datamodule, backbone: torch.nn.Module, batch_size: int = 512, device: str | None = None):
    """A copy of `datamodule` (same splits, same batch order) whose inputs are the backbone's features.

    Computed on `device` (default: the GPU when there is one, else where the backbone is); the backbone is moved
    there for the pass and back afterwards, so the caller's module is left where it was (in place, no second copy
    of a large model). The features are kept in host memory, like the images they replace."""
    if getattr(datamodule, "augment_pad", None) is not None:
        raise ValueError("augmented training data gives different features every step: it cannot be cached")
    home = next(backbone.parameters()).device
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else home))
    backbone.eval()
    backbone.to(device)
    try:
        chunks = datamodule.data.images.split(batch_size)
        features = torch.cat([backbone(chunk.to(device)).cpu() for chunk in chunks])
    finally:
        backbone.to(home)
    cached = copy.copy(datamodule)
    cached.data = replace(datamodule.data, images=features)
    return cached
