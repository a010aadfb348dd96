"""Backbones and datasets by name: one decorator adds one (docs/extending.md), and the errors for an unknown name
list what is registered."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from helpers import compose_config
from trainwise.data import ImageTensors, build_datamodule, dataset_names, register_dataset
from trainwise.errors import UserError
from trainwise.models import backbone_names, build_model, register_backbone


@register_backbone("test_pool_net")
class PoolNet(nn.Module):
    """A backbone of the kind docs/extending.md describes: pooled features, num_features, group_matcher."""

    def __init__(self, in_chans: int, image_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 6, 3)
        self.num_features = 6

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        return {"stem": r"^conv\."}


@register_dataset("test_stripes")
def load_stripes(cfg) -> ImageTensors:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 8, 8, generator=generator)
    labels = torch.arange(40) % 2
    images[labels == 1, :, ::2] = 1.0  # class 1: striped rows
    return ImageTensors(images, labels, ["plain", "striped"])


def test_a_registered_backbone_is_built_by_name_with_a_head_for_the_classes():
    assert {"mlp", "small_cnn", "test_pool_net"} <= set(backbone_names())
    net = build_model(OmegaConf.create({"name": "test_pool_net"}), num_classes=3, in_chans=1, image_size=8)
    assert isinstance(net.backbone, PoolNet)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_an_unknown_model_name_lists_the_registered_backbones():
    with pytest.raises(UserError, match=r"neither one of trainwise's backbones \(.*small_cnn.*test_pool_net\)"):
        build_model(OmegaConf.create({"name": "no_such_net_xyz"}), num_classes=3, in_chans=1, image_size=8)


def test_a_registered_dataset_is_loaded_by_name_and_unknown_names_list_the_registry():
    assert "test_stripes" in dataset_names()
    cfg = compose_config("dataset=digits").dataset
    OmegaConf.set_struct(cfg, False)
    cfg.name, cfg.image_size = "test_stripes", 8
    datamodule = build_datamodule(cfg, seed=0)
    assert datamodule.num_classes == 2 and sum(datamodule.sizes().values()) == 40
    cfg.name = "no_such_data"
    with pytest.raises(UserError, match=r"choose one of: .*digits.*test_stripes"):
        build_datamodule(cfg, seed=0)


def test_a_name_cannot_be_registered_twice_by_different_code():
    with pytest.raises(ValueError, match="small_cnn"):
        register_backbone("small_cnn")(PoolNet)
    with pytest.raises(ValueError, match="digits"):
        register_dataset("digits")(load_stripes)
