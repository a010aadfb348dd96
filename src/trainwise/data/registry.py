"""Datasets by name: a loader registers itself with `@register_dataset("name")`, and `dataset.name` (or
`source.name`) is looked up here. A loader takes the dataset's config node and returns `ImageTensors`."""

from __future__ import annotations

from collections.abc import Callable

_LOADERS: dict[str, Callable] = {}


def register_dataset(*names: str):
    """Function decorator: `dataset.name=<name>` loads its images with this function (one loader may serve
    several names, as torchvision's sets do)."""

    def register(loader: Callable) -> Callable:
        for name in names:
            if name in _LOADERS and _LOADERS[name] is not loader:
                raise ValueError(f"a dataset named {name!r} is registered already ({_LOADERS[name].__qualname__})")
            _LOADERS[name] = loader
        return loader

    return register


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def get_loader(name: str) -> Callable | None:
    return _LOADERS.get(name)
