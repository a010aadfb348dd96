"""`hparams_search=optuna`: a hyperparameter search as an Optuna study (Optuna >= 4, its ask/tell API).

trainwise's Hydra sweeper (hydra_plugins/trainwise_optuna) asks the study for trials and launches each as a Hydra
job through the configured launcher (in-process, joblib, submitit/SLURM): `hparams_search.n_jobs` at once. A job
reports `val/acc` to its trial after every validation epoch; the pruner may stop it there (the run ends FINISHED
with the tag `trainwise.trial_state=PRUNED`); a finished job tells the study its `val/acc_best` (validation: the
test split is never the objective). A job that fails leaves its trial FAIL.

The study lives in `hparams_search.storage`: any Optuna storage URL (sqlite:///..., postgresql://...), or a journal
file (a path ending in .log or .journal, or journal:///<path>: for a shared filesystem under SLURM); by default an
SQLite file `optuna.db` beside a SQLite MLflow store (else in the working folder). Running the same command again
continues the same study: `hparams_search.n_trials` counts its finished (complete or pruned) trials, so an
interrupted search picks up where it stopped, and a larger n_trials adds trials that TPE draws knowing the earlier
ones.

Written here (not a plugin): hydra-optuna-sweeper pins Optuna < 3 and keeps its study in memory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainwise.errors import UserError

PRUNERS = ("median", "hyperband", "none")
SQLITE_TIMEOUT_S = 60  # parallel trials write to one SQLite file: wait for the lock instead of "database is locked"


@dataclass
class Search:
    storage_url: str
    study_name: str
    n_trials: int
    n_jobs: int
    pruner: str
    seed: int
    distributions: dict  # config key -> optuna distribution

    def storage(self):
        """The Optuna storage object (a UserError names the setting when it cannot be opened)."""
        import optuna

        url = self.storage_url
        try:
            if url.startswith("journal:") or url.endswith((".log", ".journal")):
                from optuna.storages.journal import JournalFileBackend, JournalStorage

                path = Path(url.removeprefix("journal://").removeprefix("journal:")).expanduser()
                path.parent.mkdir(parents=True, exist_ok=True)
                return JournalStorage(JournalFileBackend(str(path)))
            kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's ArgumentError, ImportError for a missing driver, ...
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"hparams_search.storage={url!r} cannot be opened as an Optuna storage ({first[:200]}); give an "
                "Optuna storage URL (sqlite:///optuna.db, postgresql://...) or a journal file (study.log)"
            ) from None

    def study(self, storage=None):
        """The study, created on first use and continued after."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Using an existing study" from every job
        sampler = optuna.samplers.TPESampler(seed=self.seed)
        pruner = {
            "median": optuna.pruners.MedianPruner(),
            "hyperband": optuna.pruners.HyperbandPruner(),
            "none": optuna.pruners.NopPruner(),
        }[self.pruner]
        return optuna.create_study(
            storage=storage or self.storage(), study_name=self.study_name, direction="maximize", sampler=sampler,
            pruner=pruner, load_if_exists=True,
        )  # fmt: skip


def is_optuna(config: DictConfig) -> bool:
    """Whether this multirun is trainwise's Optuna search."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
    return target.endswith("TrainwiseOptunaSweeper")


def from_config(config: DictConfig) -> Search:
    """hparams_search.* checked (each bad value is a UserError naming the key)."""
    search = config.get("hparams_search")
    if search is None:
        raise UserError("the Optuna sweeper needs an hparams_search node; run with hparams_search=optuna")
    for key in ("n_trials", "n_jobs"):
        value = search.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"hparams_search.{key}={value!r} must be a positive integer")
    pruner = str(search.get("pruner", "median")).lower()
    if pruner not in PRUNERS:
        raise UserError(f"hparams_search.pruner={pruner!r} must be one of: {', '.join(PRUNERS)}")
    seed = search.get("seed", 0)
    if not isinstance(seed, int):
        raise UserError(f"hparams_search.seed={seed!r} must be an integer")
    return Search(
        storage_url=storage_url(config), study_name=study_name(config), n_trials=search.n_trials,
        n_jobs=search.n_jobs, pruner=pruner, seed=seed, distributions=distributions(search.get("params")),
    )  # fmt: skip


def storage_url(config: DictConfig) -> str:
    configured = config.hparams_search.get("storage")
    if configured:
        return str(configured)
    uri = str(config.tracking.get("uri") or "")
    # An absolute path: the parent's tag must name the file wherever optuna-dashboard is started.
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).expanduser().resolve().parent / 'optuna.db'}"
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def study_name(config: DictConfig) -> str:
    return str(config.hparams_search.get("study_name") or f"{config.tracking.experiment}-{config.strategy.name}")


def distributions(params) -> dict:
    """`{key: {low, high, log, step, int}}` -> a float or int range; `{key: [a, b, ...]}` -> a choice."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if params is None or not OmegaConf.is_dict(params) or len(params) == 0:
        raise UserError(
            "hparams_search.params is empty; give the keys to search, e.g. "
            "optimizer.lr: {low: 1e-4, high: 1e-2, log: true}"
        )
    out = {}
    for key, spec in params.items():
        try:
            if OmegaConf.is_list(spec):
                out[key] = CategoricalDistribution(list(spec))
            elif OmegaConf.is_dict(spec):
                low, high = spec.get("low"), spec.get("high")
                if spec.get("int", False):
                    out[key] = IntDistribution(int(low), int(high), log=bool(spec.get("log", False)),
                                               step=int(spec.get("step") or 1))  # fmt: skip
                else:
                    out[key] = FloatDistribution(float(low), float(high), log=bool(spec.get("log", False)),
                                                 step=spec.get("step"))  # fmt: skip
            else:
                raise ValueError("expected {low, high[, log, step, int]} or a list of choices")
        except (TypeError, ValueError) as err:
            shown = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec
            raise UserError(f"hparams_search.params.{key}={shown!r}: {err}") from None
    return out


def run_study(config: DictConfig, arguments: list[str], launch) -> None:
    """The sweeper's loop: ask n_jobs trials, launch them as one batch of Hydra jobs, mark the ones whose job
    failed before telling the study; until the study holds n_trials finished trials (or as many trials failed
    in this command, which stops a search whose every job fails)."""
    import optuna
    from optuna.trial import TrialState

    search = from_config(config)
    study = search.study()
    if study.trials:  # a continued study: a sampler seeded as the first command's would draw its trials again
        study.sampler = optuna.samplers.TPESampler(seed=search.seed * 100_003 + len(study.trials))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    failed = 0
    job_idx = 0
    print(f"Optuna study {search.study_name!r} in {search.storage_url}: {_count(study, finished)} of "
          f"{search.n_trials} trials finished", flush=True)  # fmt: skip
    while (remaining := search.n_trials - _count(study, finished)) > 0 and failed < search.n_trials:
        trials = [study.ask(search.distributions) for _ in range(min(search.n_jobs, remaining))]
        overrides = [
            (*arguments, *(f"++{key}={_value(v)}" for key, v in trial.params.items()),  # ++: set, or add
             f"hparams_search.trial_id={trial._trial_id}", f"hparams_search.trial_number={trial.number}")
            for trial in trials
        ]  # fmt: skip
        launch(overrides, job_idx)
        job_idx += len(trials)
        for trial in trials:
            if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:  # its job never told
                study.tell(trial, state=TrialState.FAIL)
                failed += 1
    best = _best(study)
    if best is not None:
        print(f"Optuna study {search.study_name!r}: best trial {best.number}, val/acc_best {best.value:.4f}, "
              f"{best.params}", flush=True)  # fmt: skip


def _count(study, states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def _value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- inside a job


def job_trial(cfg: DictConfig):
    """(search, trial) when this job is a trial of a running study, else None."""
    trial_id = OmegaConf.select(cfg, "hparams_search.trial_id", default=None)
    if trial_id is None:
        return None
    import optuna

    search = from_config(cfg)
    study = search.study()
    return search, optuna.trial.Trial(study, int(trial_id))


def pruning_callback(trial):
    """A Lightning callback that reports val/acc to the trial after every validation epoch and stops the fit where
    the pruner says so (as optuna-integration's PyTorchLightningPruningCallback, without its DDP restrictions or
    the extra package). Its `pruned` says whether it did."""
    import pytorch_lightning as pl

    class Pruning(pl.Callback):
        pruned = False

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or "val/acc" not in trainer.callback_metrics:
                return
            trial.report(float(trainer.callback_metrics["val/acc"]), step=trainer.current_epoch)
            if trial.should_prune():
                self.pruned = True
                trainer.should_stop = True

    return Pruning()


def tell(trial, pruning, result, store) -> None:
    """The job's outcome for its trial: PRUNED (and the tag on its run), or COMPLETE with val/acc_best."""
    from optuna.trial import TrialState

    study = trial.study
    if result is None:
        return  # failed: the sweeper marks it
    tags = {"trainwise.optuna_trial": str(trial.number)}
    value = result.metrics.get("val/acc_best")
    if pruning is not None and pruning.pruned:
        study.tell(trial.number, state=TrialState.PRUNED)
        tags["trainwise.trial_state"] = "PRUNED"
    elif value is None:
        study.tell(trial.number, state=TrialState.FAIL)
        tags["trainwise.trial_state"] = "FAIL"
    else:
        study.tell(trial.number, value)
        tags["trainwise.trial_state"] = "COMPLETE"
    try:
        for key, val in tags.items():
            store.client.set_tag(result.run_id, key, val)
    except Exception as err:  # noqa: BLE001 - the study has the outcome; the tag is for the report
        print(f"warning: could not tag run {result.run_id} with its trial state ({err})", file=sys.stderr)
