"""The LightningModule: classification with cross-entropy and torchmetrics accuracy, for every strategy.

What differs between strategies (which weights, what is frozen, which LR per group) is decided in
`trainwise.strategies` and handed in as parameter groups and a list of frozen modules.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

CHECK_EVERY = 50  # steps between checks that the training loss is still finite


class ClassificationModule(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer_cfg,
        scheduler_cfg,
        param_groups: list[dict],
        frozen: list[nn.Module],
        checkpoint_meta: dict,
        features_cached: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        self.net = net
        self.optimizer_cfg = optimizer_cfg
        self.scheduler_cfg = scheduler_cfg
        self.param_groups = param_groups
        self.frozen = frozen
        # Lightning records each submodule's train/eval mode when fitting starts and restores it around
        # validation, so frozen parts must already be in eval mode here, not only when train() is called.
        for module in frozen:
            module.eval()
        self.checkpoint_meta = checkpoint_meta
        self.features_cached = features_cached  # inputs are backbone features: only the head runs
        self.channels_last = channels_last and not features_cached  # images in NHWC to match the weights
        # Per stage: mean loss and accuracy, accumulated on the device each step and logged once per epoch
        # (a self.log call per step costs Lightning about a millisecond; on small models that is the overhead).
        # keys "<stage>_split": ModuleDict keys must not shadow Module attributes such as train()
        self.stage_metrics = nn.ModuleDict({f"{stage}_split": LossAndAccuracy() for stage in ("train", "val", "test")})
        self.samples_trained = 0  # training images this process has fitted on (len() of a batch: no device sync)
        # Test-only extras: top-5 (when there are at least 5 classes), macro F1, and the confusion matrix.
        self.test_extras = nn.ModuleDict({"f1_macro": MulticlassF1Score(num_classes, average="macro")})
        if num_classes >= 5:
            self.test_extras["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        # Counts non-finite training losses on the device; read every CHECK_EVERY steps, not every step. A plain
        # tensor, not a buffer: DDP broadcasts buffers from rank 0 at each forward, which would erase other ranks'.
        self.nonfinite_losses = torch.zeros((), dtype=torch.int64)

    def forward(self, x):
        if self.features_cached:
            return self.net.head(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def train(self, mode: bool = True):
        # Frozen parts stay in eval mode: BatchNorm statistics and dropout of a frozen backbone are untouched.
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def _step(self, batch, stage: str):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.stage_metrics[f"{stage}_split"].update(loss.detach(), logits.detach(), labels)
        if stage == "test":
            for metric in self.test_extras.values():
                metric.update(logits, labels)
            self.test_confusion.update(logits, labels)
        return loss

    def _log_epoch(self, stage: str) -> None:
        stage_metric = self.stage_metrics[f"{stage}_split"]
        values = dict(stage_metric.compute())  # summed over every DDP rank
        stage_metric.reset()
        if stage == "test":
            for name, metric in self.test_extras.items():
                values[name] = metric.compute()
                metric.reset()
        publish_epoch_metrics(self.trainer, {f"{stage}/{name}": value for name, value in values.items()})

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        self.nonfinite_losses.add_((~torch.isfinite(loss)).long())
        self.samples_trained += len(batch[1])
        return loss

    def on_train_start(self):
        self.nonfinite_losses = torch.zeros((), dtype=torch.int64, device=self.device)  # not moved with the module

    def on_train_epoch_start(self):
        # After the callbacks' hook: a group UnfreezeBackbone added now takes the schedule's LR from its first step.
        for config in self.trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, GroupsLambdaLR):
                config.scheduler.schedule_new_groups()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if (batch_idx + 1) % CHECK_EVERY == 0:
            self._stop_if_diverged()

    def on_train_epoch_end(self):
        self._stop_if_diverged()
        self._log_epoch("train")

    def _stop_if_diverged(self) -> None:
        diverged = int(self.nonfinite_losses) > 0  # the one host sync, every CHECK_EVERY steps
        # Decided over the ranks (every rank checks at the same steps): under DDP, a rank that raised alone would
        # leave the others in their next collective (gloo: connection reset; NCCL: a hang).
        if self.trainer.strategy.reduce_boolean_decision(diverged, all=False):
            raise FloatingPointError(
                f"train/loss became NaN or infinite by step {self.global_step}: training stopped. "
                "Lower optimizer.lr, set trainer.gradient_clip_val, or check the data."
            )

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_test_epoch_end(self):
        self._log_epoch("test")

    def configure_optimizers(self):
        optimizer = instantiate(self.optimizer_cfg)(self.param_groups)
        if self.scheduler_cfg.name == "none":
            return optimizer
        if self.scheduler_cfg.name == "cosine":
            total = int(self.trainer.estimated_stepping_batches)
            # eta_min is per group in spirit: scale each group's floor by its own initial LR.
            ratio = float(self.scheduler_cfg.get("eta_min_ratio", 0.0))
            scheduler = GroupsLambdaLR(optimizer, Cosine(total, ratio))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        raise ValueError(f"unknown scheduler {self.scheduler_cfg.name}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What a later fine-tune needs to rebuild this network: model config, input shape, classes.
        checkpoint["trainwise"] = self.checkpoint_meta


def publish_epoch_metrics(trainer: pl.Trainer, metrics: dict[str, torch.Tensor]) -> None:
    """What `self.log(name, value, prog_bar=...)` in an epoch-end hook does, for values computed once an epoch:
    callbacks (checkpoints, early stopping, Optuna's pruning, the epoch lines) find them in
    `trainer.callback_metrics`, the progress bar shows the loss and accuracy, and the loggers get them with the
    epoch and step Lightning would give (none during the sanity check, as with Lightning). Written by hand because
    self.log keeps a result entry per key that Lightning re-reads at every batch end: on small_cnn/digits its
    bookkeeping for these values was about 8,000 Python calls an epoch, an eighth of a whole run's."""
    trainer.callback_metrics.update(metrics)
    scalars = {name: float(value) for name, value in metrics.items()}  # one host read per value
    # in a terminal the bar shows the last epoch's loss and accuracy (it has no other epoch lines)
    trainer.progress_bar_metrics.update({k: v for k, v in scalars.items() if k.rsplit("/", 1)[-1] in ("loss", "acc")})
    if trainer.sanity_checking:
        return
    trainer.logged_metrics.update(metrics)
    for logger in trainer.loggers:
        logger.log_metrics(scalars | {"epoch": trainer.current_epoch}, step=trainer.global_step)
        logger.save()


class LossAndAccuracy(Metric):
    """One stage's mean loss (weighted by batch size) and top-1 accuracy, kept as sums on the device and summed
    over DDP ranks by torchmetrics. Hand-written because torchmetrics' MeanMetric + MulticlassAccuracy pair took
    ~73 µs a step against ~19 µs for this (input casts and checks, stat-score formatting, two update calls), a
    measurable share of a small model's step. No check reads a value back to the host (that would stall a GPU
    every step): the inputs are our own, and a non-finite loss is caught by the module."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        count = labels.numel()
        self.loss_sum.add_(loss.float() * count)
        self.correct.add_((logits.argmax(1) == labels).sum())
        self.count.add_(count)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss_sum / self.count, "acc": self.correct / self.count}


class Cosine:
    """The cosine factor at an optimizer step, from 1 down to `floor`. A class, not a closure: LambdaLR saves a
    callable object's attributes in its state (plain numbers, so a checkpoint loads with weights_only=True)."""

    def __init__(self, total_steps: int, floor: float):
        self.total_steps, self.floor = int(total_steps), float(floor)

    def __call__(self, step: int) -> float:
        progress = min(1.0, step / max(1, self.total_steps))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


class GroupsLambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR with one factor for every parameter group, groups added after it was built included (the backbone
    that BaseFinetuning adds at `strategy.unfreeze_at_epoch`): such a group follows the same global schedule from
    the step it joins, with its own LR as base. Torch's LambdaLR keeps one lambda per group it was built with and
    fails (zip strict) once the optimizer has more."""

    def schedule_new_groups(self) -> None:
        for group in self.optimizer.param_groups[len(self.base_lrs) :]:
            group.setdefault("initial_lr", group["lr"])
            self.base_lrs.append(group["initial_lr"])
            self.lr_lambdas.append(self.lr_lambdas[0])
            group["lr"] = group["initial_lr"] * self.lr_lambdas[0](self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        self.schedule_new_groups()
        return super().get_lr()

    def load_state_dict(self, state_dict: dict) -> None:
        # A checkpoint taken after the unfreeze has a lambda state per group, the added ones too.
        self.lr_lambdas += [self.lr_lambdas[0]] * (len(state_dict["lr_lambdas"]) - len(self.lr_lambdas))
        super().load_state_dict(state_dict)
