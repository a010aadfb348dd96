"""Gradual unfreezing (`strategy.unfreeze_at_epoch`, and the two phases of `strategy=lp_ft`)."""

from __future__ import annotations

from pytorch_lightning.callbacks import BaseFinetuning
from torch.nn.modules.batchnorm import _BatchNorm


class UnfreezeBackbone(BaseFinetuning):
    """`strategy.unfreeze_at_epoch`: the backbone stays frozen (eval mode) until that epoch, then trains at
    `lr` in a new optimizer group named "backbone". Lightning's BaseFinetuning does the bookkeeping (and its
    checkpoint state); unlike its default (train_bn=True), BatchNorm stays frozen while the backbone is.

    What unfreezes is what `strategy.freeze` left trainable (`stages:<k>`: the stages after the first k, which stay
    frozen), or the whole backbone when it left nothing (`backbone`, as in lp_ft).

    Resumed past that epoch, the unfreeze is done again at the first epoch: Lightning re-freezes the backbone at
    setup and restores the added optimizer group (BaseFinetuning.on_fit_start) but not `requires_grad`."""

    def __init__(self, at_epoch: int, lr: float):
        super().__init__()
        self.at_epoch, self.lr = int(at_epoch), float(lr)
        self._to_unfreeze: list = []
        self._frozen_after: list = []
        self._unfrozen = False

    def freeze_before_training(self, pl_module) -> None:
        backbone = pl_module.net.backbone
        self._to_unfreeze = [p for p in backbone.parameters() if p.requires_grad] or list(backbone.parameters())
        self._frozen_after = [m for m in pl_module.frozen if m is not backbone]
        self._unfrozen = False
        self.freeze(backbone, train_bn=False)
        pl_module.frozen = [*self._frozen_after, backbone]  # the whole backbone in eval mode until the epoch
        pl_module.train(pl_module.training)

    def finetune_function(self, pl_module, current_epoch: int, optimizer) -> None:
        if current_epoch < self.at_epoch or self._unfrozen:
            return
        self._unfrozen = True
        unfreeze = {id(p) for p in self._to_unfreeze}
        for module in pl_module.net.backbone.modules():
            own = list(module.parameters(recurse=False))
            if isinstance(module, _BatchNorm) and own and id(own[0]) in unfreeze:
                module.track_running_stats = True  # BaseFinetuning.freeze switched it off
        for param in self._to_unfreeze:
            param.requires_grad_(True)
        # By identity: Lightning's filter_on_optimizer compares values (torch.equal), so it would drop a parameter
        # equal to another one that is already in the optimizer. Resumed past the epoch, or with stages:<k>, the
        # parameters are there already (restored group, or the backbone group from the start).
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        added = [p for p in self._to_unfreeze if id(p) not in present]
        if added:
            optimizer.add_param_group({"params": added, "lr": self.lr, "name": "backbone"})
        pl_module.frozen = self._frozen_after
        pl_module.train(pl_module.training)
