"""The reference article's two networks (its examples are experiments/mnist_mlp_scratch.yaml and
cifar10_cnn_full.yaml) as backbones with timm's small interface, registered as `mlp` and `small_cnn`.

Each returns pooled features from `forward` (like a timm model built with num_classes=0), reports
`num_features`, and names its stages with `group_matcher`, so freezing and layer-wise LR treat them like any
timm model. The classifier head is added by `trainwise.models.Net`.
"""

from __future__ import annotations

from torch import nn

from trainwise.models.registry import register_backbone


class _StagedBackbone(nn.Module):
    """Stages in order; stage 0 is the stem. `group_matcher` follows timm's convention."""

    stages: nn.Sequential
    num_features: int

    def forward(self, x):
        return self.stages(x)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        return {"stem": r"^stages\.0\.", "blocks": r"^stages\.(\d+)\."}


@register_backbone("mlp")
class SimpleNN(_StagedBackbone):
    """flatten - 128 - 64 (the reference article's MLP, 784→128→64 for 28×28 inputs)."""

    def __init__(self, in_chans: int, image_size: int):
        super().__init__()
        in_features = in_chans * image_size * image_size
        self.stages = nn.Sequential(
            nn.Sequential(nn.Flatten(), nn.Linear(in_features, 128), nn.ReLU()),
            nn.Sequential(nn.Linear(128, 64), nn.ReLU()),
        )
        self.num_features = 64


@register_backbone("small_cnn")
class SmallCNN(_StagedBackbone):
    """conv32-pool - conv64-pool - conv64-dense64 (the reference article's Keras CIFAR CNN).

    'same' padding instead of Keras' 'valid' so that 8×8 inputs still reach the last convolution.
    """

    def __init__(self, in_chans: int, image_size: int):
        super().__init__()
        reduced = image_size // 4
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_chans, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(
                nn.Conv2d(64, 64, 3, padding=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(64 * reduced * reduced, 64),
                nn.ReLU(),
            ),
        )
        self.num_features = 64
