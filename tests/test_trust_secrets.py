"""A failed run's error tag and error.txt are masked like its config: no secret from the message, the traceback
or the environment reaches the tracking store."""

from __future__ import annotations

import pytest

from helpers import mlflow_client
from trainwise.tracking import open_store
from trainwise.tracking.run import TrackedRun


def test_a_failed_runs_error_tag_and_traceback_are_masked(tmp_path, store_uri, monkeypatch):
    from_env = "env-pa55word-value"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", from_env)
    store = open_store(store_uri)
    experiment_id = store.experiment_id("secrets")
    with pytest.raises(RuntimeError), TrackedRun(store, experiment_id, "failing", {}) as tracked:
        database = "postgresql://bob:uri-pa55word@db/x"  # a local: tracebacks show source lines, not locals
        raise RuntimeError(f"cannot log in to {database} with api_key=key-pa55word as {from_env}")
    client = mlflow_client(store_uri)
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FAILED"
    error = run.data.tags["trainwise.error"]
    traceback = open(client.download_artifacts(tracked.run_id, "error.txt", str(tmp_path))).read()
    for text in (error, traceback):
        assert "RuntimeError: cannot log in to postgresql://bob:***@db/x with api_key=*** as ***" in text
        assert "pa55word" not in text


def test_masking_survives_another_thread_changing_the_environment(monkeypatch):
    """MLflow's telemetry thread unsets a variable of its own while a job masks its config; reading os.environ item
    by item then raised KeyError and failed 2 of 4 jobs of a parallel sweep."""
    import os
    import sys
    import threading

    from trainwise.config import mask_text

    monkeypatch.setenv("MY_API_TOKEN", "tok-123456")
    interval = sys.getswitchinterval()
    stop = threading.Event()

    def toggle():
        while not stop.is_set():
            os.environ["_TRAINWISE_TEST_RACE"] = "x"
            del os.environ["_TRAINWISE_TEST_RACE"]

    sys.setswitchinterval(1e-6)  # switch threads often, as a busy process does now and then
    thread = threading.Thread(target=toggle)
    thread.start()
    try:
        masked = [mask_text("token tok-123456") for _ in range(2000)]
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert set(masked) == {"token ***"}
