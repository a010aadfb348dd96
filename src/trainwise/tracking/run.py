"""A run's lifecycle: created with its tags and config, metrics streamed by Lightning, ended FINISHED,
FAILED or KILLED (never left RUNNING)."""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from trainwise.config import mask_text
from trainwise.errors import Interrupted, TrackingFailed

# Epoch metrics reach the store at most this often while training (and all of them when the run ends).
SEND_EVERY_S = 5.0
# MLflow accepts up to 6000 characters per param value in 3.x; longer values are cut with a marker.
_MAX_PARAM_CHARS = 6000


class TrackedRun:
    """Context manager around one MLflow run that trainwise owns.

    Once the run exists, a failing tracking store (a server gone down mid-training) does not stop training:
    the first failure is remembered and later calls are queued. At the end they are sent again, with every
    epoch metric (kept by RunLogger): if the store is back, the run ends as if nothing happened (MLflow ignores
    metric points it already has); if not, leaving the context raises TrackingFailed, which names the store,
    the error and the local folder holding the checkpoints and final metrics.
    """

    def __init__(
        self,
        store,
        experiment_id: str,
        run_name: str,
        tags: dict[str, str],
        reopen: str | None = None,
        local_dir: Path | None = None,
        system_metrics_s: float | None = None,
    ):
        self.store = store
        self.system_metrics_s = system_metrics_s  # sample CPU/memory/disk/network/GPU this often (None: not at all)
        self._system_metrics = None
        self.reopen = reopen  # an interrupted run to continue (resume): same run id, status back to RUNNING
        self.client = store.client
        self.experiment_id = experiment_id
        self.run_name = run_name
        self.tags = tags
        self.local_dir = local_dir
        self.run_id: str = ""
        self.broken: Exception | None = None
        self.pending: list[tuple] = []  # calls skipped since the store failed, resent at the end
        self.metric_history: list = []  # every epoch metric RunLogger sent (mlflow Metric entities)
        self.metric_epochs: list[int] = []  # the epoch of each of them
        self.checkpointed_epoch = -1  # the last epoch saved in last.ckpt (what resume continues after)

    def __enter__(self) -> TrackedRun:
        if self.reopen:
            self.run_id = self.reopen
            self.client.update_run(self.run_id, status="RUNNING")
            # Where the run now lives (a later resume looks for its checkpoints there) and that it was resumed.
            moved = {
                k: v for k, v in self.tags.items() if k in ("trainwise.job_dir", "trainwise.host", "trainwise.pid")
            }
            self.set_tags(moved | {"trainwise.resumed": "true"})
        else:
            run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=self.tags)
            self.run_id = run.info.run_id
        if self.system_metrics_s:
            self._system_metrics = self.safely(_start_system_metrics, self, resumed=bool(self.reopen))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        stopped = exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, Interrupted))
        if isinstance(exc, Interrupted) and not exc.run_id:
            exc.run_id = self.run_id
        late = None  # a signal that came while the records were being sent
        try:
            if self._system_metrics is not None:  # its last samples go out while the run is still RUNNING
                self.safely(self._system_metrics.finish)
            self.safely(_flush_async_logging, self.client)
            # MLflow's asynchronous queue drops a batch the store refused without telling anyone, so every epoch
            # point is sent once more, synchronously (MLflow ignores the points it already has). A stopped run
            # sends only the epochs its last.ckpt holds: resume trains the others again and logs them then.
            self.safely(self._send_metric_history, self.covered if stopped else None)
            if exc is not None and not stopped:
                self._record_error(exc_type, exc, tb)
        except (KeyboardInterrupt, Interrupted) as signalled:
            # Ctrl+C (or SIGTERM) while the records are sent, slowest against a remote server: skip the rest, but
            # the run still ends (KILLED) and the caller prints how to resume it.
            late = Interrupted(getattr(signalled, "signum", signal.SIGINT), self.run_id)
            if exc is None:
                exc_type, exc, stopped = Interrupted, late, True
        status = "FINISHED" if exc is None else "KILLED" if stopped else "FAILED"
        with _signals_held():  # a run is never left RUNNING because a signal came at this moment
            self.safely(self.client.set_terminated, self.run_id, status)
        if self.broken is not None and not self._resend() and exc is None:
            raise TrackingFailed(self.store.uri, self.broken, self.local_dir)
        if late is not None and exc is late:
            raise late  # the run was ending well; it is KILLED now, and the caller prints how to resume it
        return False

    def _record_error(self, exc_type, exc, tb) -> None:
        """The error as the `trainwise.error` tag (first line) and `error.txt` (traceback), secrets masked."""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else exc_type.__name__
        tag = mask_text(f"{exc_type.__name__}: {message}")[:5000]
        self.safely(self.client.set_tag, self.run_id, "trainwise.error", tag)
        text = mask_text("".join(traceback.format_exception(exc_type, exc, tb)))
        self.safely(self.client.log_text, self.run_id, text, "error.txt")

    def _send_metric_history(self, count: int | None = None) -> None:
        """Send the first `count` epoch points again (all of them by default)."""
        points = self.metric_history[:count]
        for start in range(0, len(points), 1000):  # MLflow's batch limit is 1000 metrics
            self.client.log_batch(self.run_id, metrics=points[start : start + 1000])

    @property
    def covered(self) -> int:
        """How many epoch points (from the start of metric_history) belong to epochs last.ckpt holds."""
        count = 0
        while count < len(self.metric_history) and self.metric_epochs[count] <= self.checkpointed_epoch:
            count += 1
        return count

    def _resend(self) -> bool:
        """Send the epoch metrics and the queued calls again; True if the store took them all."""
        try:
            self._send_metric_history()
            for function, args, kwargs in self.pending:
                function(*args, **kwargs)
        except Exception:  # noqa: BLE001 - still down: reported by the caller
            return False
        print(f"The tracking store {self.store.uri} is back: the run's records were sent again.", file=sys.stderr)
        self.broken, self.pending = None, []
        return True

    def safely(self, function, *args, **kwargs):
        """Call the store unless it already failed in this run (then queue the call); remember its first failure."""
        if self.broken is not None:
            if function is not _flush_async_logging:
                self.pending.append((function, args, kwargs))
            return None
        try:
            return function(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any store failure: keep training, report at the end
            self.broken = err
            if function is not _flush_async_logging:
                self.pending.append((function, args, kwargs))
            print(f"warning: the tracking store {self.store.uri} failed ({_first_line(err)}); training goes on "
                  "and this is reported at the end", file=sys.stderr, flush=True)  # fmt: skip
            return None

    def log_params(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit is 100 params
            self.safely(self.client.log_batch, self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.safely(self.client.log_batch, self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.safely(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.safely(self.client.log_text, self.run_id, text, artifact_file)

    def log_dataset(self, name: str, digest: str, source: dict, profile: dict, context: str) -> None:
        """An MLflow dataset input, so the UI shows which data a run used (its Datasets column and tab)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name, digest, "trainwise", json.dumps(source), profile=json.dumps(profile))
        inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])]
        self.safely(self.client.log_inputs, self.run_id, inputs)

    def log_artifact(self, path: str | Path, artifact_dir: str) -> None:
        self.safely(self.client.log_artifact, self.run_id, str(path), artifact_dir)


class QuietRun:
    """What a DDP rank other than 0 holds instead of a TrackedRun: the same calls, bound to rank 0's run id,
    sending nothing (rank 0 logs for the whole job)."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def __enter__(self) -> QuietRun:
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def safely(self, function, *args, **kwargs):
        return None

    def log_params(self, params) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def set_tags(self, tags) -> None:
        pass

    def log_text(self, text, artifact_file) -> None:
        pass

    def log_dataset(self, *args, **kwargs) -> None:
        pass

    def log_artifact(self, path, artifact_dir) -> None:
        pass


@contextmanager
def _signals_held():
    """SIGINT/SIGTERM are ignored for the length of the block: the one store call that ends a run (main thread
    only, as signal handlers are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start_system_metrics(tracked: TrackedRun, resumed: bool):
    """MLflow's system-metrics sampler (the UI's "System metrics" tab: CPU, memory, disk, network, GPU when there
    is one), bound to this run's store rather than the process-wide tracking URI."""
    import logging

    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop/no-GPU lines are noise

    class SystemMetrics(SystemMetricsMonitor):
        def finish(self):
            # MLflow's version drops the samples taken since the last interval: a run shorter than one interval
            # would have none. Publish them (the first sample is taken as the sampler starts).
            if self._process is None:
                return
            self._shutdown_event.set()
            self._process.join()
            pending = self.aggregate_metrics()
            if pending:
                self.publish_metrics(pending)
            self.mlflow_logger.flush()
            self._process = None

    monitor = SystemMetrics(
        tracked.run_id,
        sampling_interval=tracked.system_metrics_s,
        resume_logging=resumed,
        tracking_uri=tracked.store.uri,
    )
    monitor.start()
    return monitor


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


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

    Lightning streams epoch metrics into it asynchronously (a copy of each stays with the TrackedRun, to be sent
    again if the store fails). trainwise logs the config itself (dotted keys, no 250-character cut) and ends the
    run after testing and logging checkpoints, so the two hooks that would do otherwise are switched off here.
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
        self.tracked = tracked
        self._sent = 0  # points of tracked.metric_history already handed to MLflow
        self._last_send = 0.0

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        # Lightning's version, plus a copy of every point in the TrackedRun, which sends them again at the end if
        # the store failed meanwhile (asynchronous logging only reports failures when flushed). Points go out at
        # most every SEND_EVERY_S seconds: with epochs of a fraction of a second, a store write per epoch (a
        # background thread, but the same 2 cores) was most of tracking's cost. The rest go out when the run ends.
        from mlflow.entities import Metric

        now = time.time()
        epoch = int(metrics.get("epoch", -1))  # Lightning adds the epoch to every epoch-level call
        batch = [Metric(key, float(value), int(now * 1000), step or 0) for key, value in metrics.items()]
        self.tracked.metric_history.extend(batch)
        self.tracked.metric_epochs.extend([epoch] * len(batch))
        if self.tracked.broken is None and now - self._last_send >= SEND_EVERY_S:
            self._send(now)

    @rank_zero_only
    def log_epoch_cost(self, epoch: int, step: int, fit_seconds: float) -> None:
        """cost/fit_seconds at an epoch's end (straight into the history: a self.log call would cost Lightning
        thousands of Python calls per epoch). The run's final cost/fit_seconds is the last point."""
        from mlflow.entities import Metric

        point = Metric("cost/fit_seconds", float(fit_seconds), int(time.time() * 1000), step)
        self.tracked.metric_history.append(point)
        self.tracked.metric_epochs.append(epoch)

    def checkpointed(self, epoch: int) -> None:
        """last.ckpt now holds `epoch`: its points may go out (see LastCheckpoint)."""
        self.tracked.checkpointed_epoch = epoch

    def _send(self, now: float) -> None:
        # Only points of epochs that last.ckpt holds: were the run stopped now, resume would train the later
        # epochs again and log them a second time.
        covered = self.tracked.covered
        unsent = self.tracked.metric_history[self._sent : covered]
        self._sent, self._last_send = max(self._sent, covered), now
        for start in range(0, len(unsent), 1000):  # MLflow's batch limit
            self.experiment.log_batch(run_id=self.run_id, metrics=unsent[start : start + 1000], synchronous=False)

    def log_hyperparams(self, params) -> None:
        pass

    def finalize(self, status: str = "success") -> None:
        pass
