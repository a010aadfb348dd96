"""`optimizer.lr=auto`: Lightning's learning-rate finder on the training split, before the run trains.

Lightning's `Tuner.lr_find` trains a copy of the model for `num_training` steps while the learning rate grows
exponentially, and suggests the rate where the loss falls fastest. It sweeps every parameter group alike, so the
suggestion is the head's rate; a fine-tune's backbone then trains at it times `strategy.backbone_lr_mult`. The run
logs the suggestion (`optimizer.lr_found`) and the loss-vs-rate plot (`lr_find/lr_find.png`); a resumed run reuses
the suggestion it logged instead of searching again.
"""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig, open_dict

from trainwise.errors import UserError

STEPS = 100  # lr_find's default
UNDER_DDP = (
    "optimizer.lr=auto runs the learning-rate finder in one process; under DDP every rank would find its own rate. "
    "Run it once without DDP and pass the rate it logs (optimizer.lr_found) as optimizer.lr"
)
PROBE_LR = 1e-3  # only builds the optimizer the finder then drives from min_lr to max_lr


def wanted(cfg: DictConfig) -> bool:
    return str(cfg.optimizer.get("lr")) == "auto"


def resolve(cfg: DictConfig, net, datamodule, module_kwargs: dict, tracked, job_dir: Path, world) -> float:
    """Find the rate, log it and its plot, and set `cfg.optimizer.lr` to it (in place). Returns the rate."""
    if world.distributed:  # (ranks started by torchrun or SLURM; config.validate refuses accelerator DDP earlier)
        raise UserError(UNDER_DDP)
    found = _logged(tracked)
    if found is None:
        found = _search(cfg, net, datamodule, module_kwargs, tracked, job_dir)
    with open_dict(cfg):
        cfg.optimizer.lr = found
    return found


def _logged(tracked) -> float | None:
    """A resumed run's own suggestion (the finder draws random batches: a second search could differ)."""
    client = getattr(tracked, "client", None)
    if client is None or not tracked.run_id:
        return None
    value = client.get_run(tracked.run_id).data.params.get("optimizer.lr_found")
    return float(value) if value is not None else None


def _search(cfg: DictConfig, net, datamodule, module_kwargs: dict, tracked, job_dir: Path) -> float:
    import pytorch_lightning as pl
    from pytorch_lightning.tuner import Tuner

    from trainwise import strategies
    from trainwise.module import ClassificationModule
    from trainwise.report.plots import pyplot

    probe_cfg = cfg.copy()
    with open_dict(probe_cfg):
        probe_cfg.optimizer.lr = PROBE_LR
    probe_net = copy.deepcopy(net)  # the run itself starts from the weights it was given
    groups = strategies.optimizer_groups(probe_cfg, probe_net)
    module = ClassificationModule(probe_net, optimizer_cfg=probe_cfg.optimizer, param_groups=groups, **module_kwargs)
    trainer = pl.Trainer(
        accelerator=cfg.accelerator.accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(job_dir / "lr_find"),
    )  # fmt: skip
    # The datamodule, not its loader: its on_after_batch_transfer makes the batches float and augments them.
    finder = Tuner(trainer).lr_find(module, datamodule=datamodule, num_training=STEPS, update_attr=False)
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None:
        raise UserError(
            f"optimizer.lr=auto: the learning-rate finder found no rate in {STEPS} steps (the loss never fell); "
            "give optimizer.lr a number"
        )
    figure = finder.plot(suggest=True)
    plot = job_dir / "lr_find.png"
    figure.savefig(plot, dpi=100)
    pyplot().close(figure)
    tracked.log_params({"optimizer.lr_found": suggestion})
    tracked.log_artifact(plot, "lr_find")
    print(f"Learning-rate finder: optimizer.lr = {suggestion:.3g} (plot: lr_find/lr_find.png on the run)", flush=True)
    return float(suggestion)
