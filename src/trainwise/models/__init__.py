"""Models: every model is a `Net` (backbone + head). `build_model` builds one by name (trainwise's registered
backbones, then timm); `register_backbone` adds a backbone of your own."""

from trainwise.models.factory import build_backbone, build_model, check_model_name, count_parameters
from trainwise.models.net import Net, feature_size
from trainwise.models.registry import backbone_names, register_backbone

__all__ = [
    "Net",
    "backbone_names",
    "build_backbone",
    "build_model",
    "check_model_name",
    "count_parameters",
    "feature_size",
    "register_backbone",
]
