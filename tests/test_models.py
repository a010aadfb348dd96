"""The model factory: every backbone gets a head sized from the features it really returns."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from trainwise.models import build_model


@pytest.mark.parametrize(
    ("name", "head_hidden"),
    [
        ("vgg16", 256),  # pools to 4096 (pre-logits ConvMlp) while num_features says 512: the reference article's case
        ("mobilenetv3_small_050", None),  # conv_head: 1024 while num_features says 288
        ("resnet18", None),
        ("small_cnn", None),
    ],
)
def test_the_head_fits_what_the_backbone_returns(name, head_hidden):
    cfg = OmegaConf.create({"name": name, "head_hidden": head_hidden})
    net = build_model(cfg, num_classes=5, in_chans=3, image_size=32)
    out = net(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 5)


def test_measuring_the_backbone_leaves_it_in_training_mode_with_fresh_batchnorm_statistics():
    net = build_model(OmegaConf.create({"name": "mobilenetv3_small_050"}), num_classes=5, in_chans=3, image_size=32)
    assert net.training and net.backbone.training
    norms = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(int(m.num_batches_tracked) == 0 and not m.running_mean.any() for m in norms)
