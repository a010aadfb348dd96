"""`trainwise train`: the Hydra task. One run reads top to bottom like a recipe:

config -> tracking run -> weights (foundation) -> data -> model -> freeze -> fit -> test -> log costs and checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from trainwise import accelerator
from trainwise.config import config_hash, flatten, mask_secrets, mask_text, to_container, validate, validate_before_run
from trainwise.errors import Interrupted, TrackingFailed, UserError
from trainwise.paths import conf_dir, experiments_dir

log = logging.getLogger("trainwise")

# Jobs of this process that failed (a sweep goes on past them; the CLI's exit code reports them).
FAILED_JOBS: list[str] = []


@dataclass
class JobContext:
    """Where a run writes locally and what Hydra recorded about how it was launched."""

    job_dir: Path
    overrides: list[str] = field(default_factory=list)
    hydra_yaml: Path | None = None
    parent_run_id: str | None = None
    extra_tags: dict[str, str] = field(default_factory=dict)
    signals: object = None  # trainwise.signals.RunSignals: SIGINT/SIGTERM while the run lives


@dataclass
class ResumePoint:
    """An interrupted run to continue: its id, its last checkpoint, the input shape its model was built for."""

    run_id: str
    checkpoint: str
    input_shape: tuple[int, int]
    best_checkpoint: str | None = None  # the run's best.ckpt, which last.ckpt's state names


@dataclass
class RunResult:
    run_id: str
    experiment_id: str
    metrics: dict[str, float]


def run(cfg: DictConfig, ctx: JobContext) -> RunResult | None:
    """Train and log one run; under DDP, one rank of it (only rank 0 returns a result)."""
    from trainwise import distributed
    from trainwise.signals import RunSignals

    validate(cfg)
    with RunSignals() as signals, distributed.ranks(cfg.accelerator, ctx.job_dir, ctx.overrides) as world:
        ctx.signals = signals
        if not world.is_zero:
            plan = world.receive_plan()  # None: rank 0 ended before training (an error, a skipped job)
            return None if plan is None else _train_and_log(OmegaConf.create(plan.cfg), ctx, None, world, plan)
        return _lead(cfg, ctx, world)


def _lead(cfg: DictConfig, ctx: JobContext, world) -> RunResult:
    """Rank 0 (or the only process) decides what to train. A `full` run holds the foundation lock while it
    trains, so a parallel fine-tune waiting for the same foundation reuses it instead of training a second one."""
    from trainwise import strategies
    from trainwise.tracking import open_store

    store = open_store(cfg.tracking.uri)
    try:
        validate_before_run(cfg)
    except UserError as err:
        if ctx.parent_run_id:  # in a sweep, the job still shows up, FAILED, so the report and parent see it
            _record_failed_job(cfg, ctx, store, err)
        raise
    if cfg.resume:
        from trainwise.resume import resume_point

        asked_accelerator = cfg.accelerator  # the command line's; the run continues on the one it logged
        cfg, point = resume_point(cfg, store, ctx.job_dir)
        _check_same_ranks(cfg, world, asked_accelerator)
        return _train_and_log(strategies.effective_config(cfg), ctx, store, world, Plan(resume=point))
    cfg = strategies.effective_config(cfg)
    if cfg.sweep.skip_finished:
        done = _finished_twin(cfg, store, ctx)
        if done is not None:
            return done
    if cfg.strategy.data == "source":
        return _train_foundation(cfg, ctx, store, world)
    return _train_and_log(cfg, ctx, store, world)


def _train_foundation(cfg: DictConfig, ctx: JobContext, store, world) -> RunResult:
    """A `full` run holds the foundation lock while it trains, so a parallel fine-tune waiting for the same
    foundation reuses it instead of training a second one. The other way round too: a `full` job that waited
    while a parallel fine-tune trained this very foundation on the side reuses that run. Two explicit `full`
    jobs of one foundation (two seeds, say) both train: the user asked for both."""
    from trainwise import strategies
    from trainwise.tracking import find_foundation_run

    wanted = strategies.foundation_hash(cfg)
    before = find_foundation_run(store, wanted)  # compared by id, not by time: machines' clocks may differ
    with _foundation_lock(store, wanted):
        found = find_foundation_run(store, wanted)
        trained_on_the_side = found is not None and "trainwise.trained_for" in found.data.tags
        if trained_on_the_side and (before is None or found.info.run_id != before.info.run_id):
            said = f"full: skipped, run {found.info.run_id} of a parallel job trained foundation {wanted} meanwhile"
            return _reuse(found, ctx, store, said)
        return _train_and_log(cfg, ctx, store, world)


def _reuse(twin, ctx: JobContext, store, said: str) -> RunResult:
    """A finished run stands in for this job; the report of its sweep covers it too."""
    if ctx.parent_run_id:
        store.client.set_tag(ctx.parent_run_id, f"trainwise.reused.{twin.info.run_id}", "true")
    print(said, flush=True)
    return RunResult(twin.info.run_id, twin.info.experiment_id, dict(twin.data.metrics))


def _check_same_ranks(cfg: DictConfig, world, asked) -> None:
    """A resumed run continues on the accelerator it logged; the ranks of this job were started from the command
    line's, so the two must agree on DDP (and with it on who logs and who writes checkpoints)."""
    from trainwise.distributed import uses_ddp

    if uses_ddp(cfg.accelerator) != world.distributed:
        keys = [k for k in ("devices", "num_nodes") if k in cfg.accelerator]
        extra = "".join(f" accelerator.{k}={cfg.accelerator[k]}" for k in keys)
        raise UserError(
            f"resume={cfg.resume}: that run trained with accelerator={cfg.accelerator.name}, this command asks for "
            f"accelerator={asked.name}; resume it the way it ran: trainwise train resume={cfg.resume} "
            f"accelerator={cfg.accelerator.name}{extra if uses_ddp(cfg.accelerator) else ''}"
        )


@dataclass
class Plan:
    """What rank 0 hands every other rank before training (they never touch the tracking store)."""

    cfg: dict | None = None
    run_id: str = ""
    foundation: object = None  # pretrained.Foundation: the weights a fine-tune starts from
    resume: ResumePoint | None = None


def _train_and_log(cfg: DictConfig, ctx: JobContext, store, world=None, plan: Plan | None = None) -> RunResult | None:
    import pytorch_lightning as pl
    import torch

    from trainwise import distributed, strategies
    from trainwise.data import build_datamodule
    from trainwise.models import build_model, count_parameters
    from trainwise.module import ClassificationModule
    from trainwise.strategies import pretrained
    from trainwise.strategies.freeze import freeze
    from trainwise.tracking import register_foundation

    world = world or distributed.World()
    plan = plan or Plan()
    resume = plan.resume
    data_cfg = strategies.training_data(cfg)
    with _open_run(cfg, ctx, store, world, plan) as tracked:
        if resume is None and world.is_zero:
            _log_config(tracked, cfg, ctx)

        # Weights: a fine-tune starts from a foundation (found in MLflow, trained first, or given). A resumed
        # run restores every weight from its checkpoint instead. Under DDP, rank 0 finds them and hands them on.
        foundation = plan.foundation
        if strategies.uses_pretrained(cfg) and resume is None and world.is_zero:
            foundation = pretrained.resolve(
                cfg.strategy.pretrained,
                store,
                lambda: _find_or_train_foundation(cfg, ctx, store, tracked.run_id, world),
                model_name=cfg.model.name,
            )
            tracked.set_tags({"trainwise.foundation_run": foundation.run_id or foundation.source})
        if world.is_zero:
            world.send_plan(Plan(to_container(cfg), tracked.run_id, foundation, resume))

        # Data: the slot the strategy trains on, shaped as the foundation (or the resumed model) expects.
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        input_shape = resume.input_shape if resume else (foundation.input_shape if foundation else None)
        # Tiny labelled sets: each epoch repeats the data so the run sees min_train_steps steps in max_epochs.
        min_batches = math.ceil(cfg.min_train_steps / cfg.trainer.max_epochs)
        datamodule = build_datamodule(data_cfg, cfg.seed, input_shape, min_batches)
        if resume is None and world.is_zero:  # (the digest hashes every image: not on ranks that log nothing)
            sizes = {f"data.{k}_size": v for k, v in datamodule.sizes().items()}
            facts = {
                "data.num_classes": datamodule.num_classes,
                "data.steps_per_epoch": datamodule.steps_per_epoch(world.world_size),
            }
            tracked.log_params(sizes | facts)
            _log_data(tracked, data_cfg, datamodule)

        # Model: backbone + a new head for this data's classes; then what the strategy freezes.
        channels, image_size = datamodule.input_shape
        net = build_model(cfg.model, datamodule.num_classes, channels, image_size)
        if foundation is not None:
            skipped = pretrained.load_into(net, foundation)
            if skipped:  # the foundation's own head: replaced by a new one for this data's classes
                tracked.set_tags({"trainwise.skipped_keys": ", ".join(skipped)[:5000]})
        frozen = freeze(net, cfg.strategy.get("freeze", "none"))
        prepared = time.perf_counter()
        cached = strategies.caches_features(cfg)
        if cached:
            from trainwise.data.features import cache_features

            device = "cuda" if accelerator.on_gpu(cfg.accelerator) else "cpu"
            datamodule = cache_features(
                datamodule, net.backbone, device=device, precision=accelerator.precision(cfg.accelerator)
            )
        tracked.set_tags({"trainwise.cached_features": str(cached).lower()})
        caching_seconds = time.perf_counter() - prepared
        channels_last = accelerator.channels_last(cfg.accelerator)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        if cfg.accelerator.get("compile", False):
            net.compile()  # in place: the state dict (checkpoints, foundations) keeps its keys
        module = ClassificationModule(
            net,
            datamodule.num_classes,
            cfg.optimizer,
            cfg.scheduler,
            strategies.optimizer_groups(cfg, net),
            frozen,
            checkpoint_meta={
                "model": to_container(cfg.model),
                "input_shape": [channels, image_size],
                "class_names": datamodule.data.class_names,
                "run_id": tracked.run_id,
            },
            features_cached=cached,
            channels_last=channels_last,
        )

        # Fit (from the resume checkpoint, if any), then test the best checkpoint (by val/acc). Whatever
        # happens, the checkpoints written so far are logged.
        extra = [c for c in [strategies.unfreeze_callback(cfg)] if c is not None]
        trainer, checkpoint, last = _build_trainer(
            cfg, tracked if world.is_zero else None, ctx.job_dir, extra, ctx.signals, seconds_before_fit=caching_seconds
        )
        if resume is not None and resume.best_checkpoint:  # where the resumed state says best.ckpt is
            _place(resume.best_checkpoint, Path(checkpoint.dirpath) / "best.ckpt")
        try:
            with accelerator.PeakMemory(cfg.accelerator) as peak:
                trainer.fit(
                    module, datamodule=datamodule, ckpt_path=resume.checkpoint if resume else None, weights_only=True
                )
            fit_seconds = last.fit_seconds()
            if trainer.should_stop and ctx.signals is not None and ctx.signals.received is not None:
                raise Interrupted(ctx.signals.received, tracked.run_id)  # stopped at an epoch end, saved whole
            tested = trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False, weights_only=True)[0]
        finally:
            for name in ("best.ckpt", "last.ckpt"):
                if (Path(checkpoint.dirpath) / name).is_file():
                    tracked.log_artifact(Path(checkpoint.dirpath) / name, "checkpoints")
        total, trainable = count_parameters(net)  # after fit: an unfreezing strategy trained more than it began with

        tracked.set_tags({"trainwise.data_device": str(datamodule.resident_device or "host memory")})
        samples = last.samples_before + world.total(module.samples_trained)  # every rank's, every resumed part
        confusion = module.test_confusion.compute()  # synced over the ranks: every rank computes it
        if not world.is_zero:
            return None
        metrics = {
            "test/loss": float(tested["test/loss"]),
            "test/acc": float(tested["test/acc"]),
            "cost/fit_seconds": fit_seconds,
            "cost/samples_per_second": samples / fit_seconds if fit_seconds > 0 else 0.0,
            "cost/train_samples": samples,
            "cost/peak_memory_mb": peak.mb,
            "cost/epochs": float(trainer.current_epoch),
            "model/params_total": float(total),
            "model/params_trainable": float(trainable),
        }
        metrics |= {k: float(tested[k]) for k in ("test/acc_top5", "test/f1_macro") if k in tested}
        if checkpoint.best_model_score is not None:
            metrics["val/acc_best"] = float(checkpoint.best_model_score)
        _log_confusion_matrix(tracked, confusion, datamodule.data.class_names, ctx.job_dir)
        tracked.log_metrics(metrics, step=trainer.global_step)
        (ctx.job_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))  # a local record, whatever MLflow says
        if cfg.strategy.data == "source":
            tracked.safely(register_foundation, store, tracked.run_id, cfg.model.name, cfg.source.name)
    _print_finished(cfg, tracked.run_id, tracked.experiment_id, metrics)
    return RunResult(tracked.run_id, tracked.experiment_id, metrics)


def _open_run(cfg: DictConfig, ctx: JobContext, store, world, plan: Plan):
    """Rank 0's MLflow run (new, or the one a resume continues); the other ranks' stand-in logs nothing."""
    from trainwise import strategies
    from trainwise.tracking.run import QuietRun, TrackedRun

    if not world.is_zero:
        return QuietRun(plan.run_id)
    data_name = strategies.training_data(cfg).name
    reopen = plan.resume.run_id if plan.resume else None
    experiment_id = store.experiment_id(cfg.tracking.experiment)
    tags = _run_tags(cfg, data_name, ctx)
    return TrackedRun(store, experiment_id, _run_name(cfg, data_name), tags, reopen=reopen, local_dir=ctx.job_dir)


def _run_name(cfg: DictConfig, data_name: str) -> str:
    return f"{cfg.strategy.name}-{cfg.model.name}-{data_name}"


def _record_failed_job(cfg: DictConfig, ctx: JobContext, store, err: Exception) -> None:
    from trainwise import strategies
    from trainwise.tracking.run import TrackedRun

    data_name = strategies.training_data(cfg).name
    tags = _run_tags(strategies.effective_config(cfg), data_name, ctx)
    try:
        with TrackedRun(store, store.experiment_id(cfg.tracking.experiment), _run_name(cfg, data_name), tags):
            raise err
    except UserError:
        pass


def _finished_twin(cfg: DictConfig, store, ctx: JobContext) -> RunResult | None:
    """sweep.skip_finished: a FINISHED run of the same config in the experiment stands in for this job."""
    from trainwise.tracking import find_finished_run

    experiment_id = store.experiment_id(cfg.tracking.experiment)
    twin = find_finished_run(store, experiment_id, config_hash(_identity(cfg)))
    if twin is None:
        return None
    said = f"{cfg.strategy.name}: skipped, finished run {twin.info.run_id} has the same config"
    return _reuse(twin, ctx, store, said)


def _identity(cfg: DictConfig) -> dict:
    """The config keys that define what a run computes (not where it is tracked or how it was launched)."""
    launch_only = ("tracking", "resume", "force_resume", "sweep", "trust")
    return {k: v for k, v in to_container(cfg).items() if k not in launch_only}


def _find_or_train_foundation(cfg: DictConfig, ctx: JobContext, store, finetune_run_id: str, world) -> str:
    """pretrained=auto: the newest finished full run with this foundation hash, else train it now (locked)."""
    from trainwise import strategies
    from trainwise.tracking import find_foundation_run

    wanted = strategies.foundation_hash(cfg)
    with _foundation_lock(store, wanted):
        found = find_foundation_run(store, wanted)
        if found is not None:
            log.info("fine-tuning from foundation run %s", found.info.run_id)
            return found.info.run_id
        if world.distributed:  # the other ranks wait for the fine-tune; a foundation needs its own DDP job
            raise UserError(
                f"strategy.pretrained=auto: no finished full run matches foundation {wanted}, and a DDP fine-tune "
                "does not train one on the side; train it first with the same overrides and strategy=full"
            )
        print(f"No finished full run matches foundation {wanted}: training it first, as its own run.", flush=True)
        full_cfg = strategies.foundation_config(cfg)
        overrides = [o for o in ctx.overrides if not o.lstrip("+~").startswith("strategy")] + ["strategy=full"]
        # The tag tells a parallel `full` job waiting on the lock that this run was trained on the side.
        tags = {**ctx.extra_tags, "trainwise.trained_for": finetune_run_id}
        full_ctx = replace(ctx, job_dir=ctx.job_dir / "foundation", overrides=overrides, extra_tags=tags)
        return _train_and_log(full_cfg, full_ctx, store).run_id


def _log_data(tracked, data_cfg: DictConfig, datamodule) -> None:
    """The data as an MLflow dataset input (name, source, content digest, sizes) and the classes with their
    per-split counts (`data/classes.json`)."""
    import json

    source = {k: data_cfg.get(k) for k in ("name", "root", "generator_seed", "num_per_class") if data_cfg.get(k)}
    profile = datamodule.sizes() | {"num_classes": datamodule.num_classes}
    tracked.log_dataset(data_cfg.name, datamodule.digest(), source, profile, context="training")
    classes = {"classes": datamodule.data.class_names, "counts": datamodule.class_counts()}
    tracked.log_text(json.dumps(classes, indent=1), "data/classes.json")


def _log_confusion_matrix(tracked, matrix, class_names: list[str], job_dir: Path) -> None:
    """plots/confusion_matrix.png (rows: true class, columns: predicted) and the counts as JSON."""
    from trainwise.report.plots import pyplot

    plt = pyplot()
    counts = matrix.cpu().numpy()
    size = min(12.0, 2.5 + 0.35 * len(class_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Blues")
    ticks = range(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title="Test confusion matrix")
    ax.set_xticklabels(class_names, fontsize=7, rotation=90)
    ax.set_yticklabels(class_names, fontsize=7)
    fig.tight_layout()
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / "confusion_matrix.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    tracked.log_artifact(path, "plots")
    tracked.log_text(json.dumps({"classes": class_names, "counts": counts.tolist()}), "plots/confusion_matrix.json")


def _foundation_lock(store, foundation_hash: str):
    return store.lock(f"foundation-{foundation_hash}")


def _build_trainer(
    cfg: DictConfig, tracked, job_dir: Path, extra_callbacks=None, signals=None, seconds_before_fit: float = 0.0
):
    import warnings

    import pytorch_lightning as pl

    from trainwise import distributed
    from trainwise.callbacks import BestCheckpoint, EpochLines, GracefulStop, LastCheckpoint, ProgressBar
    from trainwise.signals import RunSignals
    from trainwise.tracking.run import RunLogger

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*multiple `ModelCheckpoint` callbacks.*")  # the first is `best`, on purpose
    warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")
    # Under DDP the logged values are torchmetrics' compute(), already reduced over the ranks.
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)

    accel = cfg.accelerator
    accelerator.skip_nvml_without_driver()
    # best.ckpt: the weights of the best epoch by val/acc; last.ckpt: the full state resume continues from (not
    # save_last=True: since Lightning 2.5 that writes only in epochs where `best` improved).
    checkpoint = BestCheckpoint(job_dir / "checkpoints")
    every_s = float(cfg.get("last_checkpoint_every_s", 0))
    last = LastCheckpoint(job_dir / "checkpoints", every_s, best=checkpoint, seconds_before_fit=seconds_before_fit)
    signals = signals if signals is not None else RunSignals()  # (benchmarks build a Trainer without a run)
    interactive = sys.stdout.isatty()
    callbacks = [
        checkpoint,  # first: trainer.test(ckpt_path="best") uses the first ModelCheckpoint
        GracefulStop(signals),  # before `last`: a stop decided at an epoch end makes that last.ckpt the final one
        last,
        *(extra_callbacks or []),
        ProgressBar() if interactive else EpochLines(),
    ]
    passthrough = {k: v for k, v in to_container(cfg.trainer).items() if v is not None}
    trainer = pl.Trainer(
        accelerator=accel.accelerator,
        devices=accel.devices,
        num_nodes=int(accel.get("num_nodes", 1)),
        strategy=str(accel.get("strategy", "auto")),
        use_distributed_sampler=False,  # the datamodule gives each DDP rank its own share (data/batches.py)
        plugins=distributed.cluster_plugins(),
        precision=accelerator.precision(accel),
        deterministic=bool(cfg.deterministic),
        logger=RunLogger(tracked) if tracked is not None else False,  # under DDP only rank 0 logs
        callbacks=callbacks,
        enable_progress_bar=interactive,
        enable_model_summary=False,
        default_root_dir=str(job_dir),
        **passthrough,
    )
    return trainer, checkpoint, last


def _place(source: str, target: Path) -> None:
    """Copy a checkpoint to where this job's callbacks expect it (nothing to do if it is there already)."""
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(source).resolve() != target.resolve():
        shutil.copyfile(source, target)


def _run_tags(cfg: DictConfig, data_name: str, ctx: JobContext) -> dict[str, str]:
    from trainwise import strategies
    from trainwise.provenance import code_and_versions

    tags = {
        "trainwise.strategy": cfg.strategy.name,
        "trainwise.model": cfg.model.name,
        "trainwise.dataset": data_name,
        "trainwise.role": "job",
        "trainwise.config_hash": config_hash(_identity(cfg)),
        "trainwise.job_dir": str(ctx.job_dir.resolve()),
        **_process_tags(),
        **code_and_versions(),
        **ctx.extra_tags,
    }
    if cfg.strategy.data == "source":
        tags["trainwise.foundation_hash"] = strategies.foundation_hash(cfg)
    if ctx.parent_run_id:
        tags["mlflow.parentRunId"] = ctx.parent_run_id
    return tags


def _process_tags() -> dict[str, str]:
    """Where the run's process lives: resume tells a RUNNING run whose process is gone from one still training."""
    import os
    import socket

    return {"trainwise.host": socket.gethostname(), "trainwise.pid": str(os.getpid())}


def _log_config(tracked, cfg: DictConfig, ctx: JobContext) -> None:
    """The whole resolved config as params and artifacts, secrets masked (see config.mask_secrets)."""
    tree = mask_secrets(to_container(cfg))
    tracked.log_params(flatten(tree))
    tracked.log_text(OmegaConf.to_yaml(OmegaConf.create(tree)), "config/config.yaml")
    overrides = [mask_text(o) for o in ctx.overrides]
    tracked.log_text(OmegaConf.to_yaml(OmegaConf.create(overrides)), "config/overrides.yaml")
    if ctx.hydra_yaml is not None and ctx.hydra_yaml.is_file():
        hydra_tree = mask_secrets(OmegaConf.to_container(OmegaConf.load(ctx.hydra_yaml)))
        tracked.log_text(OmegaConf.to_yaml(OmegaConf.create(hydra_tree)), "config/hydra.yaml")


def _print_finished(cfg: DictConfig, run_id: str, experiment_id: str, metrics: dict[str, float]) -> None:
    from trainwise.tracking.store import runs_table_url

    print(
        f"{cfg.strategy.name}: test/acc {metrics['test/acc']:.4f}  test/loss {metrics['test/loss']:.4f}  "
        f"fit {metrics['cost/fit_seconds']:.1f}s  (MLflow run {run_id})\n"
        f"  See the runs: `make ui` or `trainwise ui`, then {runs_table_url(experiment_id)}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------------------
# Hydra entry point


def task(cfg: DictConfig) -> float | None:
    """The Hydra task function: one job of a run or a sweep. Returns best val/acc (the sweeper's objective)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    ctx = JobContext(
        job_dir=job_dir,
        overrides=list(hydra_cfg.overrides.task),
        hydra_yaml=job_dir / str(hydra_cfg.output_subdir) / "hydra.yaml" if hydra_cfg.output_subdir else None,
    )
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    if sweeping:
        from trainwise.sweep import active_sweep_run

        ctx.parent_run_id = active_sweep_run()
    try:
        result = run(cfg, ctx)
    except Interrupted as stopped:
        if stopped.run_id:
            print(f"Interrupted: run {stopped.run_id} is KILLED; continue it with: trainwise train "
                  f"resume={stopped.run_id}", flush=True)  # fmt: skip
        else:
            print("Interrupted before a run was recorded; nothing to resume.", flush=True)
        if sweeping:
            raise  # stop the whole sweep; the CLI ends its parent run KILLED
        raise SystemExit(stopped.exit_code) from None
    except (UserError, TrackingFailed) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        if not sweeping:
            raise SystemExit(err.exit_code) from None
        FAILED_JOBS.append(str(err))
        return None
    except Exception as err:
        if not sweeping:
            raise
        # One failed job must not stop the sweep; its run is already FAILED with the error recorded.
        log.exception("job %s failed", hydra_cfg.job.num)
        FAILED_JOBS.append(f"{type(err).__name__}: {err}")
        return None
    return result.metrics.get("val/acc_best") if result is not None else None  # None: a DDP rank other than 0


def register_experiments() -> None:
    """Put experiments/*.yaml in Hydra's `experiment` group (the folder ships beside conf/, not inside it), and
    register the resolvers the config files use."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for path in sorted(experiments_dir().glob("*.yaml")):
        store.store(group="experiment", name=path.stem, node=OmegaConf.load(path), package="_global_")
    # The SLURM launcher preset asks for the tasks and GPUs the accelerator needs (one task per DDP rank).
    OmegaConf.register_new_resolver("trainwise_tasks_per_node", _slurm_tasks_per_node, replace=True)
    OmegaConf.register_new_resolver("trainwise_gpus_per_node", _slurm_gpus_per_node, replace=True)


def _slurm_tasks_per_node(accel) -> int:
    if str(accel.get("strategy", "auto")) != "ddp":
        return 1
    if not isinstance(accel.devices, int):
        raise UserError(
            f"accelerator.devices={accel.devices!r} with hydra/launcher=slurm: give the number of devices per "
            "node (SLURM starts one task per device)"
        )
    return accel.devices


def _slurm_gpus_per_node(accel) -> int:
    if str(accel.accelerator) == "cpu":
        return 0
    return _slurm_tasks_per_node(accel)


def hydra_main(args: list[str]) -> int:
    from trainwise.sweep import finish_sweep

    register_experiments()
    sys.argv = ["trainwise train", *args]
    try:
        hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")(task)()
    except (KeyboardInterrupt, Interrupted) as stopped:
        finish_sweep(interrupted=True)
        raise SystemExit(getattr(stopped, "exit_code", 130)) from None
    finally:
        finish_sweep()  # no-op when Hydra's on_multirun_end already ended the sweep
    return 1 if FAILED_JOBS else 0
