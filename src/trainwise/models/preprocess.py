"""What a model expects of its input besides the shape: the mean/std it normalizes with, and the interpolation and
crop percentage its evaluation resize uses (timm's "data config").

`model.normalize`:
- `auto` (default): a timm architecture gets its pretrained config's values (`timm.data.resolve_data_config`: for
  resnet18 ImageNet's mean/std, bicubic, crop 0.95), whether its weights come from timm or it trains from scratch,
  so scratch and fine-tune differ only in the weights; trainwise's own backbones (mlp, small_cnn) see [0, 1]
  pixels as they are.
- `imagenet`: ImageNet's mean/std for any model. `none`: [0, 1] pixels for any model.

A fine-tune from a trainwise foundation reuses the foundation's preprocessing, which its checkpoint records
(`trainwise.preprocess`), whatever `model.normalize` says; so does a resumed run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from trainwise.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHOICES = ("auto", "imagenet", "none")


@dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, ...] | None = None  # None: the model sees [0, 1] pixels unchanged
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"  # of the resize that makes the evaluation images (and the stored ones)
    crop_pct: float = 0.875  # evaluation: resize to image_size / crop_pct, then center-crop image_size
    source: str = "none"  # where the values come from: timm:<arch>.<tag>, imagenet, foundation, none

    def as_meta(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict) -> Preprocess:
        values = dict(meta)
        for key in ("mean", "std"):
            values[key] = tuple(float(v) for v in values[key]) if values.get(key) is not None else None
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def params(self) -> dict[str, str]:
        """As run params (preprocess.*), so the MLflow UI shows what the model saw."""

        def fmt(values):
            return "none" if values is None else ",".join(f"{v:.4g}" for v in values)

        return {
            "preprocess.mean": fmt(self.mean),
            "preprocess.std": fmt(self.std),
            "preprocess.interpolation": self.interpolation,
            "preprocess.crop_pct": f"{self.crop_pct:g}",
            "preprocess.source": self.source,
        }


def resolve(model_cfg, recorded: dict | None = None) -> Preprocess:
    """The preprocessing for `model_cfg`; `recorded`: what a foundation's (or a resumed run's) checkpoint says it
    trained with, which wins. `for_channels` then fits mean and std to the images' channels."""
    if recorded is not None:
        return Preprocess.from_meta(recorded)
    choice = str(model_cfg.get("normalize", "auto")).lower()
    if choice not in CHOICES:
        raise UserError(f"model.normalize={choice!r} must be one of: {', '.join(CHOICES)}")
    if choice == "none":
        return Preprocess()
    if choice == "imagenet":
        return Preprocess(IMAGENET_MEAN, IMAGENET_STD, source="imagenet")
    timm_cfg = _timm_data_config(str(model_cfg.name))
    if timm_cfg is None:  # one of trainwise's own backbones
        return Preprocess()
    config, tag = timm_cfg
    return Preprocess(
        tuple(config["mean"]), tuple(config["std"]), str(config["interpolation"]), float(config["crop_pct"]),
        source=f"timm:{tag}",
    )  # fmt: skip


def _timm_data_config(name: str) -> tuple[dict, str] | None:
    """timm's resolved data config for architecture `name` (from its default pretrained tag; no download)."""
    from trainwise.models.registry import get_backbone

    if get_backbone(name) is not None:
        return None
    import timm.data
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(name)
    if pretrained is None:
        return timm.data.resolve_data_config({}), name  # timm's defaults (ImageNet's)
    tag = f"{pretrained.architecture}.{pretrained.tag}" if pretrained.tag else name
    return timm.data.resolve_data_config({}, pretrained_cfg=pretrained.to_dict()), tag


def for_channels(pre: Preprocess, channels: int) -> Preprocess:
    """Mean and std for `channels`-channel images. Grayscale input to an RGB-normalized model: the mean of the
    three (what the first convolution, its colour filters summed by timm's adapt_input_conv, receives)."""
    if pre.mean is None or len(pre.mean) == channels:
        return pre
    if channels == 1:
        mean, std = sum(pre.mean) / len(pre.mean), sum(pre.std) / len(pre.std)
        return replace(pre, mean=(mean,), std=(std,))
    if len(pre.mean) == 1:
        return replace(pre, mean=pre.mean * channels, std=pre.std * channels)
    raise UserError(f"the model's normalization has {len(pre.mean)} channels and the images {channels}")
