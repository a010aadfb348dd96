"""The recipe: how one run trains, top to bottom.

open the MLflow run -> data -> model (foundation weights, freezing, cached features) -> fit -> test -> log.

What to train (resume, skip, the foundation lock, which weights a fine-tune starts from) is decided before this
runs, in `jobs.py`; the Trainer is built in `trainer.py`; what the run records besides metrics, in
`tracking/record.py`. Under DDP every rank runs this recipe; only rank 0 logs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from trainwise import accelerator, distributed, lr_find, strategies
from trainwise.config import to_container
from trainwise.context import JobContext, Plan, RunResult
from trainwise.errors import Interrupted
from trainwise.tracking import record


def train_and_log(cfg: DictConfig, ctx: JobContext, store, world=None, plan: Plan | None = None) -> RunResult | None:
    """Train, test and log one run of `cfg` (already the strategy's effective config) into `store`.

    plan: what rank 0 decided (the foundation a fine-tune starts from, the checkpoint a resume continues from).
    Returns the run's id and final metrics; None on DDP ranks other than 0 (store is None there). Raises
    Interrupted after Ctrl+C/SIGTERM (the run ended KILLED, its checkpoints logged)."""
    world = world or distributed.World()
    plan = plan or Plan()
    with record.open_run(cfg, ctx, store, world, plan) as tracked:
        if plan.resume is None and world.is_global_zero:
            record.log_config(tracked, cfg, ctx)
            if plan.foundation is not None:
                tracked.set_tags({"trainwise.foundation_run": plan.foundation.run_id or plan.foundation.source})
        if world.is_global_zero:
            world.send_plan(Plan(to_container(cfg), tracked.run_id, plan.foundation, plan.resume))
        datamodule = _setup_data(cfg, plan, world, tracked)
        net, module, datamodule, caching_seconds = _setup_model(cfg, plan, datamodule, tracked, ctx, world)
        fitted = _fit_and_test(cfg, ctx, module, datamodule, tracked, world, plan, caching_seconds)
        if not world.is_global_zero:
            return None
        metrics = _log_results(cfg, ctx, net, datamodule, tracked, fitted)
        tracked.set_tags({"mlflow.note.content": record.describe_run(cfg, plan, datamodule, metrics, ctx)})
        if tracked.broken is None:  # (a store that is down already: the run's records come first)
            _log_model(cfg, ctx, store, tracked, net, datamodule)
    record.print_finished(cfg, tracked.run_id, tracked.experiment_id, metrics)
    return RunResult(tracked.run_id, tracked.experiment_id, metrics)


def _log_model(cfg: DictConfig, ctx: JobContext, store, tracked, net, datamodule) -> None:
    """The tested network as an MLflow Model (tracking.log_model: auto = full runs), a foundation registered as
    trainwise-<model>-<source>. A model the store refuses is a warning: the run, its metrics and its checkpoints
    (what resume, reproduce and strategy.pretrained=auto use) are recorded already."""
    from trainwise.tracking import register_foundation

    mode = str(cfg.tracking.get("log_model", "auto")).lower()
    foundation = cfg.strategy.data == "source"
    try:
        model_uri = None
        if (mode == "true" or (mode == "auto" and foundation)) and ctx.test and not cfg.accelerator.get("compile"):
            model_uri = record.log_model(store, tracked.run_id, net, datamodule.input_shape)  # (compiled: no pickle)
        if foundation:
            register_foundation(store, tracked.run_id, cfg.model.name, cfg.source.name, model_uri)
    except Exception as err:  # noqa: BLE001
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"warning: the run's model was not logged or registered in {store.uri} ({first})", flush=True)
        tracked.set_tags({"trainwise.model_error": first[:5000]})


def _setup_data(cfg: DictConfig, plan: Plan, world, tracked):
    """The slot the strategy trains on, shaped as the foundation (or the resumed model) expects."""
    import pytorch_lightning as pl

    from trainwise.data import build_datamodule
    from trainwise.models.preprocess import for_channels

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    foundation = plan.foundation
    input_shape = plan.resume.input_shape if plan.resume else (foundation.input_shape if foundation else None)
    # Tiny labelled sets: each epoch repeats the data so the run sees min_train_steps steps in max_epochs.
    min_batches = math.ceil(cfg.min_train_steps / cfg.trainer.max_epochs)
    data_cfg = strategies.training_data(cfg)
    preprocess = _preprocess(cfg, plan)
    datamodule = build_datamodule(data_cfg, cfg.seed, input_shape, min_batches, preprocess)
    datamodule.preprocess = for_channels(preprocess, datamodule.input_shape[0])
    _warn_if_lossy(datamodule, foundation, world)
    if plan.resume is None and world.is_global_zero:  # (the digest hashes every image: not on ranks that log nothing)
        record.log_data(tracked, data_cfg, datamodule, datamodule.steps_per_epoch(world.world_size))
    return datamodule


def _preprocess(cfg: DictConfig, plan: Plan):
    """The model's input normalization (models/preprocess.py): what the resumed run or the trainwise foundation
    trained with (a checkpoint from before it was recorded: none), else what model.normalize resolves to."""
    from trainwise.models.preprocess import resolve

    if plan.resume is not None:
        return resolve(cfg.model, plan.resume.preprocess or {})
    meta = plan.foundation.meta if plan.foundation is not None else {}
    if "input_shape" in meta:  # a trainwise checkpoint
        return resolve(cfg.model, meta.get("preprocess") or {})
    return resolve(cfg.model)


def _warn_if_lossy(datamodule, foundation, world) -> None:
    """A fine-tune sees the target as the foundation's input; one line when that throws most of it away."""
    from trainwise.data.factory import adaptation_loss

    lost = adaptation_loss(datamodule.native_shape, datamodule.input_shape) if foundation is not None else None
    if lost and world.is_global_zero:
        (c, s), (nc, ns) = datamodule.input_shape, datamodule.native_shape
        print(
            f"warning: the foundation takes {c}x{s}x{s} images, so this fine-tune sees the target's {nc}x{ns}x{ns} "
            f"images without {lost}; a foundation closer to the target keeps them (source=imagefolder "
            "source.root=<images like the target>, or strategy.pretrained=timm)",
            flush=True,
        )


def _setup_model(cfg: DictConfig, plan: Plan, datamodule, tracked, ctx: JobContext, world):
    """Backbone + a new head for this data's classes, the foundation's weights, what the strategy freezes, the
    backbone's features cached where the strategy trains the head alone; then the LightningModule."""
    import torch

    from trainwise.models import build_model
    from trainwise.module import ClassificationModule
    from trainwise.strategies import pretrained
    from trainwise.strategies.freeze import freeze

    channels, image_size = datamodule.input_shape
    tracked.set_tags({"trainwise.input": f"{channels}x{image_size}x{image_size}"})  # what the model saw
    net = build_model(cfg.model, datamodule.num_classes, channels, image_size, datamodule.preprocess)
    if plan.foundation is not None:
        skipped = pretrained.load_into(net, plan.foundation)
        if skipped:  # the foundation's own head: replaced by a new one for this data's classes
            tracked.set_tags({"trainwise.skipped_keys": ", ".join(skipped)[:5000]})
    frozen = freeze(net, cfg.strategy.get("freeze", "none"))
    datamodule, caching_seconds = _cache_features(cfg, net, datamodule, tracked)
    channels_last = accelerator.channels_last(cfg.accelerator)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.accelerator.get("compile", False):
        net.compile()  # in place: the state dict (checkpoints, foundations) keeps its keys
    meta = {
        "model": to_container(cfg.model),
        "input_shape": [channels, image_size],
        "preprocess": datamodule.preprocess.as_meta(),
        "class_names": datamodule.data.class_names,
        "run_id": tracked.run_id,
    }
    shared = {
        "num_classes": datamodule.num_classes, "scheduler_cfg": cfg.scheduler, "frozen": frozen,
        "checkpoint_meta": meta, "features_cached": strategies.caches_features(cfg), "channels_last": channels_last,
    }  # fmt: skip
    if lr_find.wanted(cfg):  # optimizer.lr=auto: Lightning's finder sets cfg.optimizer.lr
        lr_find.resolve(cfg, net, datamodule, shared, tracked, ctx.job_dir, world)
    groups = strategies.optimizer_groups(cfg, net)
    module = ClassificationModule(net, optimizer_cfg=cfg.optimizer, param_groups=groups, **shared)
    return net, module, datamodule, caching_seconds


def _cache_features(cfg: DictConfig, net, datamodule, tracked):
    """A frozen backbone's features, computed once (the head then trains on them); counted into the fit time."""
    started = time.perf_counter()
    cached = strategies.caches_features(cfg)
    if cached:
        from trainwise.data.features import cache_features

        device = "cuda" if accelerator.on_gpu(cfg.accelerator) else "cpu"
        precision = accelerator.precision(cfg.accelerator)
        datamodule = cache_features(datamodule, net.encoder, device=device, precision=precision)
    tracked.set_tags({"trainwise.cached_features": str(cached).lower()})
    return datamodule, time.perf_counter() - started


@dataclass
class Fitted:
    """What fit and test leave for the log: the trainer, its checkpoint callbacks and what they measured."""

    trainer: object
    best: object  # BestCheckpoint: best_model_score is val/acc_best
    tested: dict
    fit_seconds: float
    samples: float  # every rank's, every resumed part
    peak_mb: float
    confusion: object


def _fit_and_test(cfg, ctx: JobContext, module, datamodule, tracked, world, plan: Plan, caching_seconds) -> Fitted:
    """Fit (from the resume checkpoint, if any), then test the best checkpoint (by val/acc). Whatever happens,
    the checkpoints written so far are logged."""
    from trainwise.tracking.run import RunLogger
    from trainwise.trainer import build_trainer

    callbacks = [c for c in [strategies.unfreeze_callback(cfg)] if c is not None] + list(ctx.callbacks)
    logger = RunLogger(tracked) if world.is_global_zero else False  # under DDP only rank 0 logs
    validate = datamodule.has_validation
    trainer, best, last = build_trainer(cfg, logger, ctx.job_dir, callbacks, ctx.signals, caching_seconds, validate)
    resume = plan.resume
    if resume is not None and resume.best_checkpoint:  # where the resumed state says best.ckpt is
        _place(resume.best_checkpoint, Path(best.dirpath) / "best.ckpt")
    try:
        with accelerator.PeakMemory(cfg.accelerator) as peak:
            ckpt_path = resume.checkpoint if resume else None
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        fit_seconds = last.fit_seconds()
        if trainer.should_stop and ctx.signals is not None and ctx.signals.received is not None:
            raise Interrupted(ctx.signals.received, tracked.run_id)  # stopped at an epoch end, saved whole
        tested = {}
        if ctx.test:
            trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False, weights_only=True)
            tested = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    finally:
        for name in ("best.ckpt", "last.ckpt"):
            if (Path(best.dirpath) / name).is_file():
                tracked.log_artifact(Path(best.dirpath) / name, "checkpoints")
    samples = last.samples_before + world.total(module.samples_trained)  # a collective: every rank takes part
    confusion = module.test_confusion.compute() if ctx.test else None  # synced over the ranks: every rank computes it
    return Fitted(trainer, best, tested, fit_seconds, samples, peak.mb, confusion)


def _log_results(cfg: DictConfig, ctx: JobContext, net, datamodule, tracked, fitted: Fitted) -> dict[str, float]:
    """Test metrics, costs and parameter counts on the run, the confusion matrix, and metrics.json locally."""
    from trainwise.models import count_parameters

    total, trainable = count_parameters(net)  # after fit: an unfreezing strategy trained more than it began with
    tracked.set_tags({"trainwise.data_device": str(datamodule.resident_device or "host memory")})
    tested, fit_seconds = fitted.tested, fitted.fit_seconds
    metrics = {
        "cost/fit_seconds": fit_seconds,
        "cost/samples_per_second": fitted.samples / fit_seconds if fit_seconds > 0 else 0.0,
        "cost/train_samples": fitted.samples,
        "cost/peak_memory_mb": fitted.peak_mb,
        "cost/epochs": float(fitted.trainer.current_epoch),
        "model/params_total": float(total),
        "model/params_trainable": float(trainable),
    }
    metrics |= {k: float(tested[k]) for k in ("test/loss", "test/acc", "test/acc_top5", "test/f1_macro") if k in tested}
    if fitted.best.best_model_score is not None:
        metrics["val/acc_best"] = float(fitted.best.best_model_score)
    if ctx.test:
        record.log_confusion_matrix(tracked, fitted.confusion, datamodule.data.class_names, ctx.job_dir)
    tracked.log_metrics(metrics, step=fitted.trainer.global_step)
    (ctx.job_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))  # a local record, whatever MLflow says
    return metrics


def _place(source: str, target: Path) -> None:
    """Copy a checkpoint to where this job's callbacks expect it (nothing to do if it is there already)."""
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(source).resolve() != target.resolve():
        shutil.copyfile(source, target)
