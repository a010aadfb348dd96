"""Every model is a `Net`: `net.normalize` (the model's input normalization, see models/preprocess.py),
`net.backbone` (pooled features, timm's interface) and `net.head` (new for each task's classes). Strategies only
ever deal with that split, so scratch, full and finetune treat all models alike. A Net takes float images in
[0, 1]; it normalizes them itself, so an exported or logged model carries its preprocessing with it."""

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
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ):
        super().__init__()
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        self.backbone = backbone
        features = feature_size(backbone, *input_shape) if input_shape else backbone.num_features
        if head_hidden:
            self.head = nn.Sequential(nn.Linear(features, head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_classes))
        else:
            self.head = nn.Linear(features, num_classes)

    def forward(self, x):
        return self.head(self.features(x))

    def features(self, x):
        """What the head sees: the backbone's pooled features of the normalized images."""
        return self.backbone(self.normalize(x))

    @property
    def encoder(self) -> nn.Module:
        """normalize + backbone as one module (the same modules, not copies): what a feature cache runs."""
        return nn.Sequential(self.normalize, self.backbone)


class Normalize(nn.Module):
    """(x - mean) / std per channel. Non-persistent buffers: they follow the module's device and dtype, but stay
    out of the state dict, so checkpoints keep the keys they always had (the values are in the checkpoint's
    trainwise metadata)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        import torch

        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


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
