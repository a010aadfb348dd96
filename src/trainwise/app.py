"""`trainwise train`: the Hydra application. It registers the experiments and resolvers, runs one job per Hydra
job (`task`) and turns a job's failure into what the user sees: one line and an exit code, or, in a sweep, a
failed job the sweep goes on past. What a job trains lives in `jobs.py`; how one run trains, in `train.py`."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from trainwise.errors import Interrupted, TrackingFailed, UserError
from trainwise.paths import conf_dir, experiments_dir

log = logging.getLogger("trainwise")

# Jobs of this process that failed (a sweep goes on past them; the CLI's exit code reports them).
FAILED_JOBS: list[str] = []


def hydra_main(args: list[str]) -> int:
    """Run `trainwise train <args>` through Hydra; returns the exit code (1 if a sweep's job failed)."""
    from trainwise.sweep import finish_sweep

    register_experiments()
    # conf/hydra/launcher/submitit_local.yaml replaces the plugin's preset of that name on purpose (each job its
    # share of the cores); Hydra still merges it onto the plugin's schema, and warns that it does.
    warnings.filterwarnings("ignore", r"\s*'hydra/launcher/submitit_local' is validated against ConfigStore schema")
    sys.argv = ["trainwise train", *args]
    try:
        hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")(task)()
    except (KeyboardInterrupt, Interrupted) as stopped:
        finish_sweep(interrupted=True)
        raise SystemExit(getattr(stopped, "exit_code", 130)) from None
    finally:
        finish_sweep()  # no-op when Hydra's on_multirun_end already ended the sweep
    return 1 if FAILED_JOBS else 0


def task(cfg: DictConfig) -> float | None:
    """The Hydra task function: one job of a run or a sweep. Returns best val/acc (the sweeper's objective)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from trainwise.jobs import JobContext, run

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
        ctx.extra_tags["trainwise.job_num"] = str(hydra_cfg.job.num)  # an Optuna sweep's trial number
    try:
        trial, pruning = _optuna_trial(cfg, ctx) if sweeping else (None, None)
        result = run(cfg, ctx)
        if trial is not None:
            from trainwise import hparams_search
            from trainwise.tracking import open_store

            hparams_search.tell(trial, pruning, result, open_store(cfg.tracking.uri))
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


def _optuna_trial(cfg: DictConfig, ctx):
    """(the Optuna trial this job runs, its pruning callback, added to the Trainer's), or (None, None) when the job
    is not a trial of hparams_search=optuna."""
    from trainwise import hparams_search

    found = hparams_search.job_trial(cfg)
    if found is None:
        return None, None
    search, trial = found
    ctx.extra_tags |= {
        "trainwise.job_num": str(trial.number),  # the trial's number in its study (the report's trial column)
        "trainwise.optuna_trial": str(trial.number),
        "trainwise.optuna_study": search.study_name,
        "trainwise.optuna_storage": search.storage_url,
    }
    pruning = hparams_search.pruning_callback(trial)
    ctx.callbacks.append(pruning)
    return trial, pruning


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
