"""Gradual unfreezing (`strategy.unfreeze_at_epoch`, and the two phases of `strategy=lp_ft`)."""

from __future__ import annotations

from pytorch_lightning.callbacks import BaseFinetuning


class UnfreezeBackbone(BaseFinetuning):
    """`strategy.unfreeze_at_epoch`: the backbone stays frozen (eval mode) until that epoch, then trains at
    `lr` in a new optimizer group. Lightning's BaseFinetuning does the bookkeeping (and its checkpoint state);
    unlike its default (train_bn=True), BatchNorm stays frozen while the backbone is."""

    def __init__(self, at_epoch: int, lr: float):
        super().__init__()
        self.at_epoch, self.lr = int(at_epoch), float(lr)

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(pl_module.net.backbone, train_bn=False)

    def finetune_function(self, pl_module, current_epoch: int, optimizer) -> None:
        if current_epoch != self.at_epoch:
            return
        backbone = pl_module.net.backbone
        self.unfreeze_and_add_param_group(backbone, optimizer, lr=self.lr, train_bn=True)
        pl_module.frozen = [m for m in pl_module.frozen if m is not backbone]
        backbone.train()
