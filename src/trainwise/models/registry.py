"""trainwise's own backbones by name, as timm's `register_model`/`list_models` in miniature: a backbone class
registers itself with `@register_backbone("name")`, and `model.name` is looked up here before timm."""

from __future__ import annotations

_BACKBONES: dict[str, type] = {}


def register_backbone(name: str):
    """Class decorator: `model.name=<name>` builds this class as `cls(in_chans=..., image_size=...)`. The class
    returns pooled features from `forward` and reports `num_features` (timm's interface with num_classes=0)."""

    def register(cls: type) -> type:
        if name in _BACKBONES and _BACKBONES[name] is not cls:
            raise ValueError(f"a backbone named {name!r} is registered already ({_BACKBONES[name].__qualname__})")
        _BACKBONES[name] = cls
        return cls

    return register


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def get_backbone(name: str) -> type | None:
    return _BACKBONES.get(name)
