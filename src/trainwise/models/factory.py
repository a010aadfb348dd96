"""One factory for every model: trainwise's registered backbones and any timm architecture, each as backbone +
a new head (`Net`)."""

from __future__ import annotations

import difflib

from torch import nn

from trainwise.errors import UserError
from trainwise.models import reference_nets  # noqa: F401  (registers mlp and small_cnn)
from trainwise.models.net import Net
from trainwise.models.registry import backbone_names, get_backbone


def check_model_name(name: str) -> None:
    """A clear error for a model name that is neither one of trainwise's backbones nor a timm architecture."""
    if get_backbone(name) is not None:
        return
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, backbone_names() + timm.list_models(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        ours = ", ".join(backbone_names())
        raise UserError(f"model.name={name!r} is neither one of trainwise's backbones ({ours}) nor a timm model.{hint}")


def build_backbone(name: str, in_chans: int, image_size: int) -> nn.Module:
    check_model_name(name)
    ours = get_backbone(name)
    if ours is not None:
        return ours(in_chans=in_chans, image_size=image_size)
    import timm

    kwargs = {"img_size": image_size} if "img_size" in _timm_kwargs(name) else {}
    # num_classes=0: timm returns pooled features; trainwise adds its own head.
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)


def _timm_kwargs(name: str) -> set[str]:
    # Transformers fix their position embeddings to an image size; CNNs take any size.
    return {"img_size"} if name.startswith(("vit_", "deit_", "test_vit")) else set()


def build_model(model_cfg, num_classes: int, in_chans: int, image_size: int, preprocess=None) -> Net:
    """A `Net` for `model_cfg` (`name`, optional `head_hidden`) on in_chans x image_size x image_size images with
    a new head for `num_classes`, randomly initialised (weights are loaded afterwards), normalizing its input as
    `preprocess` (a models.preprocess.Preprocess) says. Raises UserError for an unknown model name."""
    backbone = build_backbone(model_cfg.name, in_chans, image_size)
    mean, std = (preprocess.mean, preprocess.std) if preprocess is not None else (None, None)
    head_hidden = model_cfg.get("head_hidden")
    return Net(backbone, num_classes, head_hidden, input_shape=(in_chans, image_size), mean=mean, std=std)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable
