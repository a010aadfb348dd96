"""Head-only fine-tuning on cached features: a frozen backbone with no augmentation gives the same features every
epoch, so they are computed once (eval mode, no_grad) and the head trains on them."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch


def lightning_precision(precision: str, device: torch.device):
    """The precision plugin Lightning's Trainer builds for `precision` (its legacy names mapped as it maps them)."""
    from pytorch_lightning.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

    precision = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}.get(precision, precision)
    if precision in ("16-mixed", "bf16-mixed"):
        return MixedPrecision(precision, device.type)
    if precision in ("16-true", "bf16-true"):
        return HalfPrecision(precision)
    return DoublePrecision() if precision == "64-true" else Precision()


@torch.no_grad()
def cache_features(
    datamodule,
    backbone: torch.nn.Module,  # the Net's normalization and backbone (Net.encoder)
    batch_size: int = 512,
    device: str | None = None,
    precision: str = "32-true",
):
    """A copy of `datamodule` (same splits, same batch order) whose inputs are the backbone's features.

    Computed on `device` (default: the GPU when there is one, else where the backbone is) the way Lightning runs the
    backbone under the trainer's `precision` (accelerator.precision; bf16-mixed autocast on GPU), so that they are
    the features the uncached path computes. The backbone is moved there for the pass and back afterwards, so the
    caller's module is left where it was (in place, no second copy of a large model; only a *-true precision other
    than 32, where Lightning casts the weights, computes on a cast copy). The features are kept in host memory,
    like the images they replace; half-precision ones as float32 (exact, and what the images were)."""
    if datamodule.augment != "none":
        raise ValueError("augmented training data gives different features every step: it cannot be cached")
    home = next(backbone.parameters()).device
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else home))
    backbone.eval()
    backbone.to(device)
    plugin = lightning_precision(str(precision), device)
    try:
        cast = str(precision) in ("16-true", "bf16-true", "64", "64-true")  # Lightning casts the weights
        net = plugin.convert_module(copy.deepcopy(backbone)) if cast else backbone
        images, total = datamodule.data.images, len(datamodule.data.images)
        chunks = (images[torch.arange(start, min(total, start + batch_size))] for start in range(0, total, batch_size))
        with plugin.forward_context():
            # the evaluation view: float in [0, 1], center-cropped as the uncached path's batches are
            features = [net(plugin.convert_input(datamodule.eval_view(chunk.to(device)))).cpu() for chunk in chunks]
        features = torch.cat([f.float() if f.dtype in (torch.float16, torch.bfloat16) else f for f in features])
    finally:
        backbone.to(home)
    cached = copy.copy(datamodule)
    cached.data = replace(datamodule.data, images=features)
    cached.features_cached = True
    return cached
