"""One job of `trainwise train`: what it trains, before the recipe (`train.py`) trains it.

Rank 0 decides: resume a run, skip a job whose config already FINISHED (`sweep.skip_finished`), hold the
foundation lock while a `full` run trains, and resolve the weights a fine-tune starts from (training a missing
foundation first, as its own run). The other DDP ranks receive rank 0's plan and never touch the tracking store.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from omegaconf import DictConfig, OmegaConf

from trainwise.config import config_hash, identity, validate, validate_before_run
from trainwise.context import JobContext, Plan, RunResult
from trainwise.errors import UserError
from trainwise.train import train_and_log

log = logging.getLogger("trainwise")


def run(cfg: DictConfig, ctx: JobContext) -> RunResult | None:
    """Train and log one job: a new run, a resumed one, or a finished run standing in for it.

    Under DDP this is one rank of the job, and only rank 0 returns a result. Raises UserError (a one-line problem
    the user can fix), Interrupted (Ctrl+C/SIGTERM: the run ended KILLED) or TrackingFailed."""
    from trainwise import distributed
    from trainwise.signals import RunSignals

    validate(cfg)
    with RunSignals() as signals, distributed.ranks(cfg.accelerator, ctx.job_dir, ctx.overrides) as world:
        ctx.signals = signals
        if not world.is_global_zero:
            plan = world.receive_plan()  # None: rank 0 ended before training (an error, a skipped job)
            return None if plan is None else train_and_log(OmegaConf.create(plan.cfg), ctx, None, world, plan)
        return _run_as_rank_zero(cfg, ctx, world)


def _run_as_rank_zero(cfg: DictConfig, ctx: JobContext, world) -> RunResult:
    """Rank 0 (or the only process): decide what this job trains, then train it."""
    from trainwise import strategies
    from trainwise.tracking import open_store

    store = open_store(cfg.tracking.uri)
    _validate_job(cfg, ctx, store)
    if cfg.resume:
        from trainwise.resume import resume_point

        asked_accelerator = cfg.accelerator  # the command line's; the run continues on the one it logged
        cfg, point = resume_point(cfg, store, ctx.job_dir)
        _check_same_ranks(cfg, world, asked_accelerator)
        return train_and_log(strategies.effective_config(cfg), ctx, store, world, Plan(resume=point))
    cfg = strategies.effective_config(cfg)
    if cfg.strategy.data == "source":
        return _skip_if_finished(cfg, store, ctx) or _train_foundation(cfg, ctx, store, world)
    if not cfg.tuning.enabled:
        done = _skip_if_finished(cfg, store, ctx)
        if done is not None:
            return done
    foundation = _resolve_foundation(cfg, ctx, store, world) if strategies.uses_pretrained(cfg) else None
    if cfg.tuning.enabled:  # (the learning rate is known, and with it the config a finished run would have)
        from trainwise.tuning import tuned_config

        cfg = tuned_config(cfg, ctx, store, world, foundation)
        done = _skip_if_finished(cfg, store, ctx)
        if done is not None:
            return done
    return train_and_log(cfg, ctx, store, world, Plan(foundation=foundation))


def _skip_if_finished(cfg: DictConfig, store, ctx: JobContext) -> RunResult | None:
    return _finished_run_of_same_config(cfg, store, ctx) if cfg.sweep.skip_finished else None


def _validate_job(cfg: DictConfig, ctx: JobContext, store) -> None:
    try:
        validate_before_run(cfg)
    except UserError as err:
        if ctx.parent_run_id:  # in a sweep, the job still shows up, FAILED, so the report and parent see it
            _record_failed_job(cfg, ctx, store, err)
        raise


def _train_foundation(cfg: DictConfig, ctx: JobContext, store, world) -> RunResult:
    """A `full` run holds the foundation lock while it trains, so a parallel fine-tune waiting for the same
    foundation reuses it instead of training a second one. The other way round too: a `full` job that waited
    while a parallel fine-tune trained this very foundation on the side reuses that run. Two explicit `full`
    jobs of one foundation (two seeds, say) both train: the user asked for both."""
    from trainwise import strategies
    from trainwise.tracking import find_foundation_run

    wanted = strategies.foundation_hash(cfg)
    before = find_foundation_run(store, wanted)  # compared by id, not by time: machines' clocks may differ
    with store.lock(f"foundation-{wanted}"):
        found = find_foundation_run(store, wanted)
        trained_on_the_side = found is not None and "trainwise.trained_for" in found.data.tags
        if trained_on_the_side and (before is None or found.info.run_id != before.info.run_id):
            said = f"full: skipped, run {found.info.run_id} of a parallel job trained foundation {wanted} meanwhile"
            return _reuse(found, ctx, store, said)
        return train_and_log(cfg, ctx, store, world)


def _resolve_foundation(cfg: DictConfig, ctx: JobContext, store, world):
    """The weights a fine-tune starts from (strategy.pretrained: auto, timm, a file or an MLflow URI)."""
    from trainwise.strategies import pretrained

    def find_or_train() -> str:
        return _find_or_train_foundation(cfg, ctx, store, world)

    try:
        return pretrained.resolve(cfg.strategy.pretrained, store, find_or_train, model_name=cfg.model.name)
    except Exception as err:  # (a corrupt file, a foundation that failed): the fine-tune's run shows it, FAILED
        _record_failed_job(cfg, ctx, store, err)
        raise


def _find_or_train_foundation(cfg: DictConfig, ctx: JobContext, store, world) -> str:
    """pretrained=auto: the newest finished full run with this foundation hash, else train it now (locked)."""
    from trainwise import strategies
    from trainwise.tracking import find_foundation_run

    wanted = strategies.foundation_hash(cfg)
    with store.lock(f"foundation-{wanted}"):
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
        tags = {**ctx.extra_tags, "trainwise.trained_for": f"{cfg.strategy.name} job {ctx.job_dir.resolve()}"}
        full_ctx = replace(ctx, job_dir=ctx.job_dir / "foundation", overrides=overrides, extra_tags=tags, callbacks=[])
        return train_and_log(full_cfg, full_ctx, store).run_id


def _finished_run_of_same_config(cfg: DictConfig, store, ctx: JobContext) -> RunResult | None:
    """sweep.skip_finished: a FINISHED run of the same config in the experiment stands in for this job."""
    from trainwise.tracking import find_finished_run

    experiment_id = store.experiment_id(cfg.tracking.experiment)
    twin = find_finished_run(store, experiment_id, config_hash(identity(cfg)))
    if twin is None:
        return None
    said = f"{cfg.strategy.name}: skipped, finished run {twin.info.run_id} has the same config"
    return _reuse(twin, ctx, store, said)


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


def _record_failed_job(cfg: DictConfig, ctx: JobContext, store, err: Exception) -> None:
    """A job that failed before its run opened still gets a FAILED run, with the error."""
    from trainwise import strategies
    from trainwise.tracking.record import run_name, run_tags
    from trainwise.tracking.run import TrackedRun

    data_name = strategies.training_data(cfg).name
    tags = run_tags(strategies.effective_config(cfg), data_name, ctx)
    try:
        with TrackedRun(store, store.experiment_id(cfg.tracking.experiment), run_name(cfg, data_name), tags):
            raise err
    except Exception:  # recorded; the caller raises it
        pass
