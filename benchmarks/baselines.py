"""What the figures compare against, and the trainwise paths they measure: the hand-written PyTorch loop (also
through Lightning Fabric), a bare Lightning Trainer running the same step, and trainwise's own recipe and Trainer."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from harness import CallCounter, compose, default_max_epochs, epoch_figures, epoch_timer, quiet, sync


@contextlib.contextmanager
def plain_pytorch_env():
    """The process environment of a script that never imported Lightning: Lightning's import sets
    PYTORCH_NVML_BASED_CUDA_CHECK=1, which on a machine without NVIDIA's driver makes every Adam step try to load
    NVML (see trainwise.accelerator.skip_nvml_without_driver); a plain PyTorch loop does not pay that."""
    from trainwise.accelerator import NVML_CHECK

    saved = os.environ.pop(NVML_CHECK, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[NVML_CHECK] = saved


def hand_loop(
    net,
    optimizer_cfg,
    datamodule,
    epochs: int,
    device: str = "cpu",
    bf16: bool = False,
    resident: bool = False,
    count_calls: bool = False,
) -> dict[str, float]:
    """Plain PyTorch doing the work trainwise does per epoch: shuffled batches sliced from the same tensors,
    forward, cross-entropy, backward, optimizer step, training loss/accuracy accumulated on the device; then a
    validation pass (eval mode, no_grad, loss and accuracy); one host sync per epoch to read the numbers."""
    with plain_pytorch_env():
        return _hand_loop(net, optimizer_cfg, datamodule, epochs, device, bf16, resident, count_calls)


def fabric_loop(net, optimizer_cfg, datamodule, epochs: int, count_calls: bool = False) -> dict[str, float]:
    """The hand loop (CPU) with its model and optimizer set up by Lightning Fabric and its backward through
    `fabric.backward`: what Lightning's lighter loop API costs, a reference for running trainwise's loop on it."""
    from lightning_fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    with plain_pytorch_env():
        return _hand_loop(net, optimizer_cfg, datamodule, epochs, "cpu", False, False, count_calls, fabric)


def _hand_loop(net, optimizer_cfg, datamodule, epochs, device, bf16, resident, count_calls, fabric=None):
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    net.to(device)
    optimizer = instantiate(optimizer_cfg)([p for p in net.parameters() if p.requires_grad])
    backward = torch.Tensor.backward
    if fabric is not None:
        net, optimizer = fabric.setup(net, optimizer)
        backward = fabric.backward
    images, labels = datamodule.data.images, datamodule.data.labels
    to = device if resident else "cpu"
    train_x, train_y = images[datamodule.train_idx].to(to), labels[datamodule.train_idx].to(to)
    val_x, val_y = images[datamodule.val_idx].to(to), labels[datamodule.val_idx].to(to)
    batch, seed = datamodule.batch_size, datamodule.seed
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else (lambda: contextlib.nullcontext())
    starts, window_ends = [], []
    calls = CallCounter() if count_calls else None
    for epoch in range(epochs):
        if calls:
            calls.epoch_started(epoch)
        sync()
        starts.append(time.perf_counter())
        net.train()
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for idx in torch.randperm(len(train_y), generator=generator).split(batch):
            x, y = train_x[idx].to(device, non_blocking=True), train_y[idx].to(device, non_blocking=True)
            with autocast():
                logits = net(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            backward(loss)
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
        net.eval()
        val_loss = torch.zeros((), device=device)
        val_correct = torch.zeros((), dtype=torch.int64, device=device)
        with torch.no_grad(), autocast():
            for idx in torch.arange(len(val_y)).split(batch):
                x, y = val_x[idx].to(device, non_blocking=True), val_y[idx].to(device, non_blocking=True)
                logits = net(x)
                val_loss += F.cross_entropy(logits, y) * len(y)
                val_correct += (logits.argmax(1) == y).sum()
        _ = (float(loss_sum), int(correct), float(val_loss), int(val_correct))  # the epoch-end reduction
        window_ends.append(time.perf_counter())
    sync()
    figures = epoch_figures(starts, time.perf_counter(), window_ends)
    if calls:
        calls.stopped()
        figures["python_calls_per_epoch"] = calls.per_epoch()
    return figures


def net_and_data(cfg, input_shape=None):
    import pytorch_lightning as pl

    from trainwise.data import build_datamodule
    from trainwise.models import build_model

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.dataset, cfg.seed, input_shape)
    channels, size = datamodule.input_shape
    return build_model(cfg.model, datamodule.num_classes, channels, size), datamodule


def build_module(cfg, net, datamodule, frozen=(), features_cached: bool = False):
    from trainwise import strategies
    from trainwise.module import ClassificationModule
    from trainwise.strategies.freeze import param_groups

    groups = param_groups(net, cfg.optimizer.lr, strategies.backbone_lr_mult(cfg))
    return ClassificationModule(
        net, datamodule.num_classes, cfg.optimizer, cfg.scheduler, groups, list(frozen), {}, features_cached
    )


def trainwise_recipe(
    tmp: Path, name: str, *overrides: str, count_calls: bool = False, terminal: bool = False
) -> dict[str, float]:
    """One `trainwise train <overrides>` run in-process, exactly as the Hydra task runs it (tracking into a
    temporary SQLite store, checkpoints, test, artifacts). The recipe is the thing users run, so the framework
    figure goes through it; only the epoch timer callback is added to its Trainer. terminal=True: stdout is a
    terminal, so the run draws its progress bar (in the other runs it prints a line per epoch)."""
    from trainwise.jobs import JobContext, run

    cfg = compose(f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", *overrides)
    timer = epoch_timer(count_calls)
    with quiet(terminal):
        run(cfg, JobContext(job_dir=tmp / name, overrides=list(overrides), callbacks=[timer]))
    return timer.figures()


def lightning_fit(cfg, module, datamodule, job_dir: Path, tracked=None, max_epochs: int | None = None):
    """Fit with the Trainer trainwise builds (`trainwise.trainer.build_trainer`: same callbacks, precision, trainer
    keys). tracked=None: the same Trainer with logger=False instead of the RunLogger."""
    from omegaconf import OmegaConf

    from trainwise.tracking.run import RunLogger
    from trainwise.trainer import build_trainer

    with quiet():
        cfg = cfg.copy()
        OmegaConf.set_struct(cfg, False)
        cfg.trainer.max_epochs = max_epochs or default_max_epochs(cfg, datamodule)
        trainer, *_ = build_trainer(cfg, RunLogger(tracked) if tracked is not None else False, job_dir)
    timer = epoch_timer()
    trainer.callbacks.append(timer)
    with quiet():
        trainer.fit(module, datamodule=datamodule)
    return timer.figures()


def plain_lightning(
    cfg, net, datamodule, job_dir: Path, device: str = "cpu", count_calls: bool = False
) -> dict[str, float]:
    """The hand loop's step as the smallest LightningModule, fitted by a bare Trainer (no logger, checkpoints,
    progress bar or callbacks but the epoch timer): what Lightning's loop itself costs over the hand loop."""
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    class PlainStep(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("loss_sum", torch.zeros(()))
            self.register_buffer("correct", torch.zeros((), dtype=torch.int64))

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
            self.loss_sum.add_(loss.detach() * len(y))
            self.correct.add_((logits.detach().argmax(1) == y).sum())
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            self.loss_sum.add_(F.cross_entropy(logits, y) * len(y))
            self.correct.add_((logits.argmax(1) == y).sum())

        def on_validation_epoch_end(self):
            _ = (float(self.loss_sum), int(self.correct))  # the epoch-end reduction, as the hand loop does
            self.loss_sum.zero_()
            self.correct.zero_()

        def configure_optimizers(self):
            return instantiate(cfg.optimizer)(self.parameters())

    from trainwise.accelerator import skip_nvml_without_driver

    # As trainwise's Trainer does: otherwise only the first repetition (before any trainwise run removed the
    # variable from this process) would pay the per-step NVML probe, and the split would mix that cost in.
    skip_nvml_without_driver()
    timer = epoch_timer(count_calls)
    on_gpu = device == "cuda"
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # trainwise's runs set it to WARNING
    trainer = pl.Trainer(
        accelerator="gpu" if on_gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if on_gpu else "32-true",
        max_epochs=default_max_epochs(cfg, datamodule),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
        default_root_dir=str(job_dir),
    )
    with quiet():
        trainer.fit(PlainStep(), datamodule=datamodule)
    return timer.figures()
