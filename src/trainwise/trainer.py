"""The Lightning Trainer every trainwise run trains with: its callbacks (best and last checkpoints, the graceful
stop, the progress display), precision, DDP plugins and the `trainer.*` keys of the config."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig

from trainwise import accelerator
from trainwise.config import to_container


def build_trainer(
    cfg: DictConfig,
    logger,
    job_dir: Path,
    callbacks=(),
    signals=None,
    seconds_before_fit: float = 0.0,
    validate: bool = True,
):
    """A Trainer for `cfg` that writes checkpoints under `job_dir/checkpoints`.

    logger: a Lightning logger (trainwise's `RunLogger`) or False. callbacks: extra callbacks, added after the
    checkpoint and stop callbacks. signals: the run's `RunSignals` (a new one if None). seconds_before_fit: time
    already spent on this run's fit (feature caching), counted into `cost/fit_seconds`. validate=False (no
    validation split): no validation loop, and `best.ckpt` holds the last epoch.
    Returns (trainer, best checkpoint callback, last checkpoint callback)."""
    import pytorch_lightning as pl

    from trainwise import distributed
    from trainwise.callbacks import BestCheckpoint, EpochLines, GracefulStop, LastCheckpoint, NoProfiler, ProgressBar
    from trainwise.signals import RunSignals

    _quiet_lightning()
    accel = cfg.accelerator
    accelerator.skip_nvml_without_driver()
    # best.ckpt: the weights of the best epoch by val/acc; last.ckpt: the full state resume continues from (not
    # save_last=True: since Lightning 2.5 that writes only in epochs where `best` improved).
    best = BestCheckpoint(job_dir / "checkpoints", monitor="val/acc" if validate else None)
    every_s = float(cfg.get("last_checkpoint_every_s", 0))
    last = LastCheckpoint(job_dir / "checkpoints", every_s, best=best, seconds_before_fit=seconds_before_fit)
    signals = signals if signals is not None else RunSignals()
    interactive = sys.stdout.isatty()
    all_callbacks = [
        best,  # first: trainer.test(ckpt_path="best") uses the first ModelCheckpoint
        GracefulStop(signals),  # before `last`: a stop decided at an epoch end makes that last.ckpt the final one
        last,
        *chosen_callbacks(cfg, validate),
        *callbacks,
        ProgressBar() if interactive else EpochLines(),
    ]
    passthrough = {k: v for k, v in to_container(cfg.trainer).items() if v is not None}
    passthrough.setdefault("profiler", NoProfiler())  # trainer.profiler=simple (or advanced, pytorch) still works
    if not validate:
        passthrough |= {"limit_val_batches": 0, "num_sanity_val_steps": 0}
    trainer = pl.Trainer(
        accelerator=accel.accelerator,
        devices=accel.devices,
        num_nodes=int(accel.get("num_nodes", 1)),
        strategy=str(accel.get("strategy", "auto")),
        use_distributed_sampler=False,  # the datamodule gives each DDP rank its own share (data/batches.py)
        plugins=distributed.cluster_plugins(),
        precision=accelerator.precision(accel),
        deterministic=bool(cfg.deterministic),
        logger=logger,
        callbacks=all_callbacks,
        enable_progress_bar=interactive,
        enable_model_summary=False,
        default_root_dir=str(job_dir),
        **passthrough,
    )
    return trainer, best, last


CALLBACKS = ("early_stopping", "lr_monitor")  # conf/callbacks


def chosen_callbacks(cfg: DictConfig, validate: bool = True) -> list:
    """The Lightning callbacks chosen in the `callbacks` group (callbacks=[early_stopping,lr_monitor]). Built
    here by name, not from a `_target_`: a logged config is replayed by resume and reproduce, which run no code
    a config names."""
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor

    from trainwise.errors import UserError

    chosen = cfg.get("callbacks") or {}
    unknown = sorted(set(chosen) - set(CALLBACKS))
    if unknown:
        raise UserError(f"callbacks: {', '.join(unknown)} unknown; choose from {', '.join(CALLBACKS)}")
    built = []
    if "early_stopping" in chosen:
        if not validate:
            raise UserError(
                "callbacks=early_stopping watches val/acc, and this run's labelled budget has no validation split; "
                "raise dataset.train_fraction or leave early stopping out"
            )
        stop = chosen.early_stopping
        # On an epoch's validation, before LastCheckpoint's epoch end: the epoch it stops at is saved as the last.
        built.append(EarlyStopping("val/acc", min_delta=float(stop.min_delta), patience=int(stop.patience), mode="max"))
    if "lr_monitor" in chosen:
        built.append(LearningRateMonitor(logging_interval=str(chosen.lr_monitor.logging_interval)))
    return built


def _quiet_lightning() -> None:
    """Lightning's advice that does not apply to trainwise's runs."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*multiple `ModelCheckpoint` callbacks.*")  # the first is `best`, on purpose
    warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", r".*module\(s\) in eval mode.*")  # a frozen backbone is in eval mode on purpose
    if "SLURM_JOB_ID" not in os.environ:  # outside an allocation the hint to prepend srun is noise
        warnings.filterwarnings("ignore", ".*The `srun` command is available on your system but is not used.*")
    # Under DDP the logged values are torchmetrics' compute(), already reduced over the ranks.
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
