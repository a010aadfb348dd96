"""Bad input ends in one clear line (exit 2) with nothing left FINISHED or RUNNING; faults end runs FAILED;
secrets never reach MLflow."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env, mlflow_client, run_job
from trainwise.errors import UserError


def _all_runs(uri: str):
    client = mlflow_client(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = cli_env()
    command = [sys.executable, "-m", "trainwise", *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_unknown_timm_architecture_suggests_close_names(tmp_path, store_uri):
    with pytest.raises(UserError, match="resnet18"):
        run_job(tmp_path, store_uri, "model=timm", "model.name=resnet_18")
    assert not (tmp_path / "mlflow.db").exists() or _all_runs(store_uri) == []


@pytest.mark.slow  # ~24 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_a_file_that_is_not_a_checkpoint_fails_the_run_with_exit_code_2(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_text("not a checkpoint")
    result = _cli(tmp_path, "train", "profile=smoke", "strategy=finetune", f"strategy.pretrained={bad}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "not a readable checkpoint" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    statuses = {r.info.status for r in _all_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")}
    assert statuses == {"FAILED"}


def test_a_runs_uri_to_a_missing_run_is_a_clear_error(tmp_path, store_uri):
    with pytest.raises(UserError, match="there is no run"):
        run_job(tmp_path, store_uri, "strategy=finetune", "strategy.pretrained=runs:/" + "0" * 32 + "/best.ckpt")
    assert {r.info.status for r in _all_runs(store_uri)} == {"FAILED"}


def test_weights_of_another_architecture_are_a_clear_error(tmp_path, store_uri):
    mlp = run_job(tmp_path / "mlp", store_uri, "strategy=full", "model=mlp")
    path = mlflow_client(store_uri).download_artifacts(mlp.run_id, "checkpoints/best.ckpt", str(tmp_path))
    with pytest.raises(UserError, match="do not fit"):
        run_job(tmp_path / "cnn", store_uri, "strategy=finetune", f"strategy.pretrained={path}")


def test_a_diverging_loss_stops_training_and_fails_the_run(tmp_path, store_uri):
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        run_job(tmp_path, store_uri, "optimizer=sgd", "optimizer.lr=1e12", "trainer.max_epochs=3")
    (run,) = _all_runs(store_uri)
    assert run.info.status == "FAILED" and "NaN or infinite" in run.data.tags["trainwise.error"]


def test_an_unreachable_tracking_server_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _cli(tmp_path, "train", "profile=smoke", f"tracking.uri=http://127.0.0.1:{port}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "cannot reach the MLflow tracking store" in lines[-1] and "Traceback" not in result.stderr


def test_secrets_are_masked_in_params_and_config_artifacts(tmp_path, store_uri):
    secret = "hunter2-do-not-log"
    overrides = (
        f"+extra.db_password={secret}",
        f"+extra.api_token={secret}",
        f"+extra.db=postgresql://bob:{secret}@db/x",
    )
    result = run_job(tmp_path, store_uri, *overrides)
    client = mlflow_client(store_uri)
    run = client.get_run(result.run_id)
    assert run.data.params["extra.db_password"] == "***"
    assert run.data.params["extra.db"] == "postgresql://bob:***@db/x"
    for artifact in ("config/config.yaml", "config/overrides.yaml"):
        text = open(client.download_artifacts(result.run_id, artifact, str(tmp_path))).read()
        assert secret not in text and "***" in text
    assert all(secret not in value for value in {**run.data.params, **run.data.tags}.values())


@pytest.mark.slow
def test_sqlite_locking_is_retried_with_backoff(tmp_path, store_uri):
    """A writer holding the SQLite file longer than MLflow's busy timeout (20 s): MLflow alone fails with
    "database is locked"; trainwise's client backs off, retries and succeeds."""
    import sqlite3
    import threading
    import time

    from trainwise.tracking import open_store

    store = open_store(store_uri)
    experiment_id = store.experiment_id("locked")
    run_id = store.client.create_run(experiment_id).info.run_id
    blocker = sqlite3.connect(str(tmp_path / "mlflow.db"), check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    threading.Timer(23.0, blocker.rollback).start()
    started = time.monotonic()
    store.client.set_tag(run_id, "written", "despite the lock")
    assert time.monotonic() - started >= 20
    assert store.client.get_run(run_id).data.tags["written"] == "despite the lock"
    blocker.close()


@pytest.mark.slow  # joblib on SQLite is also covered by tests/test_sweep.py (2 workers)
def test_four_parallel_jobs_on_one_sqlite_store_record_every_run(tmp_path):
    args = ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "seed=0,1,2,3", "profile=smoke"]
    result = _cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _all_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    jobs = [r for r in runs if r.data.tags.get("trainwise.role") == "job"]
    assert sorted(r.data.params["seed"] for r in jobs) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs)


def _train_against(server, tmp_path: Path, epochs: int):
    """`trainwise train` in a subprocess against `server`, returned once its run is RUNNING there. MLflow's HTTP
    retries are off so that a dead server is noticed at once."""
    import time

    env = cli_env()
    env |= {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    args = ["train", "profile=smoke", f"trainer.max_epochs={epochs}", "tracking=server", f"tracking.uri={server.uri}"]
    training = subprocess.Popen([sys.executable, "-m", "trainwise", *args], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    client = mlflow_client(server.uri)
    deadline = time.time() + 120
    while time.time() < deadline and not client.search_runs(["1"], "attributes.status = 'RUNNING'"):
        time.sleep(0.5)
    return training, client


@pytest.mark.slow
def test_a_tracking_server_dying_mid_training_is_reported_at_the_end(tmp_path, mlflow_server):
    import re
    import time

    training, _ = _train_against(mlflow_server, tmp_path, epochs=150)
    time.sleep(2)
    mlflow_server.stop()  # mid-training
    stdout, stderr = training.communicate(timeout=400)
    assert training.returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert "training finished but the tracking store" in last, stderr[-3000:]
    assert "epoch 150/150" in stdout  # training was not cut short
    job_dir = Path(re.search(r"are in (\S+)", last).group(1))
    assert (job_dir / "checkpoints" / "last.ckpt").is_file() and (job_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_a_tracking_server_back_before_the_end_gets_the_whole_run(tmp_path, mlflow_server):
    """Down for a while mid-training, back before the end: every epoch's metrics and the final records arrive."""
    import time

    training, client = _train_against(mlflow_server, tmp_path, epochs=300)
    mlflow_server.stop()
    time.sleep(3)
    mlflow_server.start()  # back while training goes on
    stdout, stderr = training.communicate(timeout=600)
    assert training.returncode == 0, stderr[-3000:]
    (run,) = client.search_runs(["1"])
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 300  # no epoch lost, none twice
    assert "checkpoints/last.ckpt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
