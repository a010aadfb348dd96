"""The Hydra callback of a multirun: one MLflow parent run per sweep.

The parent is created in `on_multirun_start`, before any job starts (which also keeps parallel jobs from
racing to create the experiment in a SQLite store). Jobs find it through the TRAINWISE_SWEEP_RUN
environment variable, which every launcher hands down (in-process, joblib workers, submitit jobs).
At the end the parent gets the report and ends FINISHED, or FAILED when any job failed. Hydra skips
`on_multirun_end` when a job raises, so the CLI calls `finish_sweep` again as a fallback: the parent is
never left RUNNING.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SWEEP_RUN_ENV = "TRAINWISE_SWEEP_RUN"
SWEEP_STORE_ENV = "TRAINWISE_SWEEP_STORE"


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from trainwise.errors import UserError

        try:
            self._start(config)
        except UserError as err:
            # SystemExit, not the error: Hydra would print any Exception with a traceback and exit 1.
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(err.exit_code) from None

    def _start(self, config: DictConfig) -> None:
        from omegaconf.errors import InterpolationResolutionError

        from trainwise import hparams_search
        from trainwise.errors import UserError
        from trainwise.provenance import code_and_versions
        from trainwise.tracking import open_store

        try:  # the launcher's settings (the SLURM preset derives tasks from the accelerator) before any job
            OmegaConf.to_container(config.hydra.launcher, resolve=True)
        except InterpolationResolutionError as err:
            cause = err  # OmegaConf re-raises while handling the resolver's error: find that error
            while cause is not None and not isinstance(cause, UserError):
                cause = cause.__cause__ or cause.__context__
            raise cause or err from None
        store = open_store(config.tracking.uri)
        experiment_id = store.experiment_id(config.tracking.experiment)
        from trainwise.config import mask_text

        overrides = [mask_text(str(o)) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]
        params = config.hydra.sweeper.get("params")
        sweeper_params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
        optuna_tags = {}
        if hparams_search.is_optuna(config):  # checked before the parent run exists: a bad value is one line
            search = hparams_search.from_config(config)
            search.storage()
            sweeper_params = OmegaConf.to_container(config.hparams_search, resolve=True)
            optuna_tags = {"trainwise.optuna_storage": search.storage_url, "trainwise.optuna_study": search.study_name}
        name = config.tracking.experiment
        run = store.client.create_run(
            experiment_id,
            run_name=f"sweep-{name}",
            tags={
                "trainwise.role": "sweep",
                "trainwise.sweep_dir": str(config.hydra.sweep.dir),
                "trainwise.sweeper": str(config.hydra.sweeper.get("_target_", "")),  # the report lists Optuna trials
                **optuna_tags,
                **code_and_versions(),
            },
        )
        store.client.log_text(run.info.run_id, OmegaConf.to_yaml(OmegaConf.create(overrides)), "config/overrides.yaml")
        store.client.log_text(run.info.run_id, OmegaConf.to_yaml(OmegaConf.create(sweeper_params)), "config/sweep.yaml")
        os.environ[SWEEP_RUN_ENV] = run.info.run_id
        os.environ[SWEEP_STORE_ENV] = store.uri
        print(f"Sweep parent run {run.info.run_id} in experiment {name!r}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        finish_sweep(target_acc=config.get("report", {}).get("target_acc"))


def active_sweep_run() -> str | None:
    return os.environ.get(SWEEP_RUN_ENV)


def finish_sweep(interrupted: bool = False, target_acc: float | None = None) -> None:
    """End the active sweep's parent run (once): report, best trial, then FINISHED, FAILED or KILLED. Never on a
    DDP rank other than 0 (started by SLURM or torchrun with the sweep's variables inherited)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    run_id, uri = os.environ.pop(SWEEP_RUN_ENV, None), os.environ.pop(SWEEP_STORE_ENV, None)
    if not run_id or not uri:
        return
    from trainwise.tracking import open_store

    store = open_store(uri)
    parent = store.client.get_run(run_id)
    if parent.info.status != "RUNNING":
        return
    status = "KILLED" if interrupted else "FINISHED"
    children = store.client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=1
    )
    if not children and not any(k.startswith("trainwise.reused.") for k in parent.data.tags):
        # Stopped before any job ran (its reason is already printed, e.g. SLURM refused the jobs): nothing to report.
        store.client.set_tag(run_id, "trainwise.error", "the sweep stopped before any of its jobs ran")
        store.client.set_terminated(run_id, "KILLED" if interrupted else "FAILED")
        return
    try:
        from trainwise.report import build_report

        sweep_dir = parent.data.tags.get("trainwise.sweep_dir")
        out_dir = Path(sweep_dir) / "report" if sweep_dir else None
        report = build_report(store, sweep_run_id=run_id, out_dir=out_dir, log_to_parent=True, target_acc=target_acc)
        report.print()
        # The parent's description (the MLflow UI's overview of the run): the verdict, then the facts.
        note = " ".join(report.verdict) + "\n\n" + "\n\n".join(f"- {line}" for line in report.summary)
        store.client.set_tag(run_id, "mlflow.note.content", note.strip())
        if report.failed_runs:
            status = "FAILED"
        best = report.best_run()
        if best is not None:
            store.client.set_tag(run_id, "trainwise.best_run", best.run_id)
            store.client.log_metric(run_id, "best/val_acc", best.metrics.get("val/acc_best", float("nan")))
            store.client.log_metric(run_id, "best/test_acc", best.metrics.get("test/acc", float("nan")))
    except Exception as err:  # noqa: BLE001 - a broken report must not leave the sweep RUNNING
        store.client.set_tag(run_id, "trainwise.error", f"report failed: {type(err).__name__}: {err}"[:5000])
        status = "FAILED"
        raise
    finally:
        store.client.set_terminated(run_id, status)
