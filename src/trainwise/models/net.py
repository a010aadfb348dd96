"""Every model is a `Net`: `net.backbone` (pooled features, timm's interface) and `net.head` (new for each task's
classes). Strategies only ever deal with that split, so scratch, full and finetune treat all models alike."""

from __future__ import annotations

from torch import nn

from trainwise.errors import UserError


class Net(nn.Module):
    """`input_shape` (channels, image size): the head is sized from the features the backbone returns for such an
    input; without it, from `backbone.num_features`."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head_hidden: int | None = None,
        input_shape: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        features = feature_size(backbone, *input_shape) if input_shape else backbone.num_features
        if head_hidden:
            self.head = nn.Sequential(nn.Linear(features, head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_classes))
        else:
            self.head = nn.Linear(features, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def feature_size(backbone: nn.Module, in_chans: int, image_size: int) -> int:
    """The width of what `backbone` returns, measured on one dummy image of the real input shape.

    timm's `num_features` is the width before its pre-logits stage: vgg16 returns 4096 (its ConvMlp), not 512;
    mobilenetv3 returns its conv_head's 1024/1280, not 288/960. Eval mode and no_grad leave BatchNorm statistics
    and autograd untouched, and the forward draws no random numbers, so seeded initialisation is unchanged.
    """
    import torch

    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros(1, in_chans, image_size, image_size))
    finally:
        backbone.train(was_training)
    if out.ndim != 2:
        raise UserError(
            f"the backbone returns features of shape {tuple(out.shape)} for a {in_chans}x{image_size}x{image_size} "
            "image; trainwise needs pooled (batch, features) outputs"
        )
    return int(out.shape[1])
