"""A run's lifecycle: created with its tags and config, metrics streamed by Lightning, ended FINISHED,
FAILED or KILLED (never left RUNNING)."""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from pytorch_lightning.loggers import MLFlowLogger

# MLflow accepts up to 6000 characters per param value in 3.x; longer values are cut with a marker.
_MAX_PARAM_CHARS = 6000


class TrackedRun:
    """Context manager around one MLflow run that trainwise owns."""

    def __init__(self, store, experiment_id: str, run_name: str, tags: dict[str, str], reopen: str | None = None):
        self.store = store
        self.reopen = reopen  # an interrupted run to continue (resume): same run id, status back to RUNNING
        self.client = store.client
        self.experiment_id = experiment_id
        self.run_name = run_name
        self.tags = tags
        self.run_id: str = ""

    def __enter__(self) -> TrackedRun:
        if self.reopen:
            self.run_id = self.reopen
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "trainwise.resumed", "true")
            return self
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        _flush_async_logging(self.client)
        if exc is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else exc_type.__name__
            self.client.set_tag(self.run_id, "trainwise.error", f"{exc_type.__name__}: {message}"[:5000])
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            self.client.log_text(self.run_id, text, "error.txt")
        self.client.set_terminated(self.run_id, status)
        return False

    def log_params(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit is 100 params
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dataset(self, name: str, digest: str, source: dict, profile: dict, context: str) -> None:
        """An MLflow dataset input, so the UI shows which data a run used (its Datasets column and tab)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name, digest, "trainwise", json.dumps(source), profile=json.dumps(profile))
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    def log_artifact(self, path: str | Path, artifact_dir: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)


def _param_value(value: object) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def _flush_async_logging(client) -> None:
    # The store of this client, not mlflow.flush_async_logging(): the fluent API resolves the default URI and
    # would create ./mlflow.db when the run lives on a server. MLflow caches one store per URI, so this is the
    # store Lightning's logger queued its metrics on.
    client._tracking_client.store.flush_async_logging()


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger, bound to the run trainwise owns.

    Lightning streams epoch metrics into it asynchronously. trainwise logs the config itself (dotted keys,
    no 250-character cut) and ends the run after testing and logging checkpoints, so the two hooks that
    would do otherwise are switched off here.
    """

    def __init__(self, tracked: TrackedRun):
        from trainwise.tracking.store import registry_env

        with registry_env(tracked.store.uri):
            super().__init__(
                experiment_name=None, tracking_uri=tracked.store.uri, run_id=tracked.run_id, synchronous=False
            )
        # Bound to an existing run: skip Lightning's lazy lookup, which calls mlflow.set_tracking_uri and so (in
        # MLflow 3) sets MLFLOW_TRACKING_URI for the whole process, leaking this store into later runs.
        self._experiment_id = tracked.experiment_id
        self._initialized = True

    def log_hyperparams(self, params) -> None:
        pass

    def finalize(self, status: str = "success") -> None:
        pass
