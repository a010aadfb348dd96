"""trainwise's own backbones by name: a backbone class registers itself with `@register_backbone("name")`, and
`model.name` is looked up here before timm."""

from __future__ import annotations

from trainwise.registry import Registry

_BACKBONES = Registry("backbone")


def register_backbone(name: str):
    """Class decorator: `model.name=<name>` builds this class as `cls(in_chans=..., image_size=...)`. The class
    returns pooled features from `forward` and reports `num_features` (timm's interface with num_classes=0)."""
    return _BACKBONES.register(name)


backbone_names = _BACKBONES.names
get_backbone = _BACKBONES.get
