"""Datasets by name: a loader registers itself with `@register_dataset("name")`, and `dataset.name` (or
`source.name`) is looked up here. A loader takes the dataset's config node and returns `ImageTensors`."""

from __future__ import annotations

from trainwise.registry import Registry

_LOADERS = Registry("dataset")


def register_dataset(*names: str):
    """Function decorator: `dataset.name=<name>` loads its images with this function (one loader may serve
    several names, as torchvision's sets do)."""
    return _LOADERS.register(*names)


dataset_names = _LOADERS.names
get_loader = _LOADERS.get
