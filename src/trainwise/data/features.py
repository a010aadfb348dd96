"""Head-only fine-tuning on cached features: a frozen backbone with no augmentation gives the same features every
epoch, so they are computed once (eval mode, no_grad) and the head trains on them."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch


@torch.no_grad()
def cache_features(datamodule, backbone: torch.nn.Module, batch_size: int = 512):
    """A copy of `datamodule` (same splits, same batch order) whose inputs are the backbone's features."""
    backbone.eval()
    device = next(backbone.parameters()).device
    images = datamodule.data.images
    features = torch.cat([backbone(chunk.to(device)).cpu() for chunk in images.split(batch_size)])
    cached = copy.copy(datamodule)
    cached.data = replace(datamodule.data, images=features)
    return cached
