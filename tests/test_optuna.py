"""hparams_search=optuna: a study on Optuna >= 4 that persists and continues, prunes, runs trials in parallel, and
the report's trial table (trainwise.hparams_search, hydra_plugins/trainwise_optuna)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from helpers import cli_env, mlflow_client
from trainwise.report import build_report
from trainwise.tracking import open_store

SEARCH = ("hparams_search=optuna", "strategy=scratch", "profile=smoke")  # scratch: no foundation to train first


def _train(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "trainwise", "train", *SEARCH, *args]
    return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def _study(cwd: Path, name: str = "optuna-scratch") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'optuna.db'}")


def _parents(cwd: Path):
    client = mlflow_client(f"sqlite:///{cwd / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(ids, "tags.`trainwise.role` = 'sweep'", order_by=["attributes.start_time ASC"])


@pytest.mark.slow  # ~57 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_the_same_command_continues_the_study_and_the_report_lists_all_its_trials(tmp_path):
    first = _train(tmp_path, "hparams_search.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [t.state.name for t in _study(tmp_path).trials] == ["COMPLETE", "COMPLETE"]
    again = _train(tmp_path, "hparams_search.n_trials=3")  # after an interruption, or to search further
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 3 trials finished" in again.stdout
    study = _study(tmp_path)
    assert [t.number for t in study.trials] == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({t.params["optimizer.lr"] for t in study.trials}) == 3  # the continued sampler drew a new point

    client, parents = _parents(tmp_path)
    assert len(parents) == 2
    tags = parents[1].data.tags
    assert tags["trainwise.optuna_study"] == "optuna-scratch"
    assert tags["trainwise.optuna_storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"
    # The second command's report covers the whole study, its trials as the study holds them.
    report = build_report(open_store(f"sqlite:///{tmp_path / 'mlflow.db'}"), sweep_run_id=parents[1].info.run_id)
    listed = {int(cells[0]): float(cells[3]) for cells in report.trials}
    assert listed == pytest.approx({t.number: t.value for t in study.trials}, abs=5e-5)  # shown to 4 places
    chosen = [int(cells[0]) for cells in report.trials if cells[-1] == "best"]
    assert chosen == [study.best_trial.number]
    assert client.get_run(tags["trainwise.best_run"]).data.tags["trainwise.optuna_trial"] == str(
        study.best_trial.number
    )
    files = {a.path for a in client.list_artifacts(parents[1].info.run_id, "report")}
    assert "report/optuna_history.png" in files


@pytest.mark.slow  # ~28 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_a_trial_that_lags_the_median_is_pruned_after_its_first_epoch(tmp_path):
    """Five earlier trials reached val/acc 1.0 at every epoch; the sixth cannot, so the median pruner stops it."""
    study = optuna.create_study(
        study_name="optuna-scratch", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize"
    )
    from helpers import compose_config
    from trainwise.hparams_search import distributions

    space = distributions(compose_config("hparams_search=optuna").hparams_search.params)
    for i in range(5):
        params = {"optimizer.lr": 1e-3, "optimizer.weight_decay": 1e-4, "strategy.backbone_lr_mult": 0.5,
                  "dataset.batch_size": [16, 32, 64, 128][i % 4]}  # fmt: skip
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=space, value=1.0, intermediate_values={0: 1.0, 1: 1.0, 2: 1.0}
        ))  # fmt: skip
    result = _train(tmp_path, "hparams_search.n_trials=6", "trainer.max_epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    trial = _study(tmp_path).trials[5]
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [0]
    client, (parent,) = _parents(tmp_path)
    (run,) = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert run.info.status == "FINISHED"  # not FAILED: it was stopped on purpose
    assert run.data.tags["trainwise.trial_state"] == "PRUNED" and run.data.tags["trainwise.optuna_trial"] == "5"
    assert run.data.metrics["cost/epochs"] == 1  # of trainer.max_epochs=3
    report = build_report(open_store(f"sqlite:///{tmp_path / 'mlflow.db'}"), sweep_run_id=parent.info.run_id)
    assert [cells[4] for cells in report.trials if cells[0] == "5"] == ["pruned"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "hparams_search.pruner=sometimes",
            "hparams_search.pruner='sometimes' must be one of: median, hyperband, none",
        ),
        ("hparams_search.n_trials=0", "hparams_search.n_trials=0 must be a positive integer"),
        ("hparams_search.storage=nosuchdb://x/y", "hparams_search.storage='nosuchdb://x/y' cannot be opened"),
    ],
)
def test_a_bad_search_setting_is_one_line_and_exit_2(tmp_path, override, message):
    result = _train(tmp_path, override, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {message}"), last
    assert "Traceback" not in result.stderr
    client, parents = _parents(tmp_path) if (tmp_path / "mlflow.db").exists() else (None, [])
    assert parents == []  # checked before the sweep's parent run is created


@pytest.mark.slow  # ~30 s: two joblib worker processes
def test_two_trials_run_at_once_on_sqlite_without_losing_either(tmp_path):
    result = _train(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hparams_search.n_jobs=2",
                    "hparams_search.n_trials=4")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stdout + result.stderr
    study = _study(tmp_path)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    client, (parent,) = _parents(tmp_path)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["trainwise.optuna_trial"] for r in runs) == ["0", "1", "2", "3"]


def test_a_journal_file_storage_holds_a_study_that_a_second_process_continues(tmp_path):
    """The storage for a filesystem SLURM nodes share: a journal file (no database server, no SQLite locking)."""
    from helpers import compose_config
    from trainwise.hparams_search import from_config

    journal = tmp_path / "shared" / "study.log"
    cfg = compose_config("hparams_search=optuna", f"hparams_search.storage={journal}", "hparams_search.n_trials=2")
    search = from_config(cfg)
    study = search.study()
    trial = study.ask(search.distributions)
    study.tell(trial, 0.5)
    again = optuna.load_study(study_name=search.study_name, storage=search.storage())  # as another process would
    assert journal.is_file() and [t.value for t in again.trials] == [0.5]
    assert isinstance(search.storage(), optuna.storages.JournalStorage)
