"""What `strategy.freeze` leaves trainable, and the optimizer's parameter groups.

`backbone`: head only (linear probe). `none`: everything trains. `stages:<k>`: the first k parameter groups of
timm's `group_matcher(coarse=True)` are frozen (the stem is the first group; trainwise's own nets, `mlp` and
`small_cnn`, name their stages the same way). Frozen modules are held in eval mode by the LightningModule, so
BatchNorm statistics do not move.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from trainwise.errors import UserError

if TYPE_CHECKING:  # torch stays unimported for the CLI's quick config check, which calls parse_freeze
    from torch import nn

_FREEZE_HELP = "valid: backbone | none | stages:<k> with k a positive integer"


def parse_freeze(spec: str) -> tuple[str, int]:
    """'backbone' -> ('backbone', 0); 'none' -> ('none', 0); 'stages:2' -> ('stages', 2)."""
    spec = str(spec)
    if spec in ("backbone", "none"):
        return spec, 0
    match = re.fullmatch(r"stages:(\d+)", spec)
    if match and int(match.group(1)) > 0:
        return "stages", int(match.group(1))
    raise UserError(f"strategy.freeze={spec!r} is not valid; {_FREEZE_HELP}")


def freeze(net: nn.Module, spec: str) -> list[nn.Module]:
    """Switch off gradients as `spec` says; return the modules to hold in eval mode."""
    mode, k = parse_freeze(spec)
    if mode == "none":
        return []
    if mode == "backbone":
        net.backbone.requires_grad_(False)
        return [net.backbone]
    from timm.models import group_parameters

    groups = list(group_parameters(net.backbone, net.backbone.group_matcher(coarse=True)).values())
    if k > len(groups):
        raise UserError(f"strategy.freeze=stages:{k} but the backbone has {len(groups)} groups; use k <= {len(groups)}")
    frozen_names = {name for group in groups[:k] for name in group}
    for name, param in net.backbone.named_parameters():
        if name in frozen_names:
            param.requires_grad_(False)
    # Modules whose own parameters are all frozen (convolutions, BatchNorm) stay in eval mode.
    return [
        m
        for m in net.backbone.modules()
        if list(m.parameters(recurse=False)) and not any(p.requires_grad for p in m.parameters(recurse=False))
    ]


def param_groups(
    net: nn.Module, lr: float, backbone_lr_mult: float, layer_decay: float | None = None, weight_decay: float = 0.0
) -> list[dict]:
    """Head at `lr`, trainable backbone at `lr * backbone_lr_mult` (discriminative fine-tuning); with
    `layer_decay`, timm's layer-wise decay on top: each backbone group's LR is scaled by its `lr_scale`.

    timm only stores `lr_scale` in each group and leaves applying it to its own schedulers; here the scale is
    folded into the group's `lr`, so any torch scheduler (which scales each group's initial LR) keeps it.
    """
    head = {"params": [p for p in net.head.parameters() if p.requires_grad], "lr": lr, "name": "head"}
    backbone_lr = lr * backbone_lr_mult
    if layer_decay is None:
        trainable = [p for p in net.backbone.parameters() if p.requires_grad]
        backbone = [{"params": trainable, "lr": backbone_lr, "name": "backbone"}]
    else:
        from timm.optim import param_groups_layer_decay

        backbone = param_groups_layer_decay(net.backbone, weight_decay=weight_decay, layer_decay=float(layer_decay))
        for i, group in enumerate(backbone):
            group["params"] = [p for p in group["params"] if p.requires_grad]
            group["lr"] = backbone_lr * group.get("lr_scale", 1.0)
            group["name"] = f"backbone.{i}"
    return [g for g in [head, *backbone] if g["params"]]
