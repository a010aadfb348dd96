"""The tracking store: which URI, the client, experiments, and the link to the runs table."""

from __future__ import annotations

import logging
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trainwise.errors import UserError

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# MLflow 3's UI opens experiments of other kinds in its GenAI (traces) view, which shows a new user nothing.
EXPERIMENT_KIND = "custom_model_development"


def resolve_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI wins over a URI from the configs; a relative sqlite path is made absolute against the
    working folder. A URI typed on the command line wins over both: the CLI drops MLFLOW_TRACKING_URI from the
    environment when it sees one (cli._typed_uri_wins), so this function needs no word of where `configured`
    came from."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str((Path.cwd() / uri[len("sqlite:///") :]).resolve())
    if "://" not in uri or uri.startswith("file:"):
        raise UserError(
            f"tracking URI {uri!r} is MLflow's file store, which MLflow 3 no longer supports; "
            "use sqlite:///mlflow.db (the default) or an http(s):// server URI in tracking.uri"
        )
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def runs_table_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    # workflowType: MLflow 3 otherwise opens its GenAI view, which shows nothing of these runs.
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_page_url(experiment_id: str, run_id: str, base: str = "http://127.0.0.1:5000") -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


@dataclass
class Store:
    uri: str
    client: object  # mlflow.MlflowClient

    def lock(self, name: str):
        """A lock that every job using this store shares, as a context manager. Beside a SQLite file, a file lock
        (the jobs share that file's machine or filesystem); for a server, a lease held in the store itself
        (tracking.lease), which jobs on other machines see and which expires if its holder dies."""
        db = sqlite_path(self.uri)
        if db is None:
            from trainwise.tracking.lease import StoreLease

            return StoreLease(self.client, name)
        from filelock import FileLock

        lock_dir = db.parent / (db.name + ".locks")
        lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(lock_dir / f"{name}.lock"))

    def artifact_root(self, experiment: str) -> str | None:
        db = sqlite_path(self.uri)
        # Artifacts beside the database (the server decides for http stores).
        return (db.parent / "mlartifacts" / experiment).as_uri() if db is not None else None

    def experiment_id(self, name: str) -> str:
        """Get or create the experiment (safe when several processes race to create it)."""
        from mlflow.exceptions import MlflowException

        existing = self.client.get_experiment_by_name(name)
        if existing is not None:
            if existing.lifecycle_stage == "deleted":
                raise UserError(
                    f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
                    "or set tracking.experiment to another name"
                )
            return existing.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=self.artifact_root(name), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException:
            existing = self.client.get_experiment_by_name(name)
            if existing is None:
                raise
            return existing.experiment_id


def open_store(configured_uri: str) -> Store:
    uri = resolve_uri(configured_uri)
    # Creating a SQLite store runs schema migrations that log at INFO; users need none of it.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        # One quick try: MLflow's default retries would keep a user waiting minutes for a server that is down.
        with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
            client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure here means the store cannot be used
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot reach the MLflow tracking store {uri}: {first_line}; "
            "start the server or set tracking.uri / MLFLOW_TRACKING_URI"
        ) from None
    return Store(uri=uri, client=RetryingClient(client))


class RetryingClient:
    """An MlflowClient whose calls retry with backoff while SQLite reports "database is locked".

    SQLite takes one writer at a time; parallel jobs on one file wait for each other, and past MLflow's busy
    timeout (20 s) a write fails with that error. MLflow does not retry it, so trainwise does (about 25 s more).
    """

    ATTEMPTS = 8

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            delay = 0.1
            for attempt in range(self.ATTEMPTS):
                try:
                    return attribute(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - re-raised unless it is SQLite's lock error
                    if "database is locked" not in str(err) or attempt == self.ATTEMPTS - 1:
                        raise
                    time.sleep(delay * (1 + random.random()))
                    delay *= 2
            return None  # not reached

        return call


def registry_env(uri: str):
    """MLflow clients made without a registry URI fall back to the default store and create ./mlflow.db."""
    return _env(MLFLOW_REGISTRY_URI=uri)


def tracking_env(uri: str, experiment_id: str | None = None):
    """For the MLflow calls that only read the store (and the experiment) from the environment: log_model,
    load_model, a model version whose source is a logged model."""
    values = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    return _env(**values, **({"MLFLOW_EXPERIMENT_ID": experiment_id} if experiment_id else {}))


@contextmanager
def _env(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
