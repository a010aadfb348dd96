"""MLflow's system metrics on every run (the UI's "System metrics" tab), even one shorter than an interval."""

from __future__ import annotations

from helpers import mlflow_client, run_job


def test_a_run_shorter_than_the_sampling_interval_still_has_its_system_metrics(tmp_path, store_uri):
    result = run_job(tmp_path, store_uri, "tracking.system_metrics_every_s=3600")  # one interval: an hour
    run = mlflow_client(store_uri).get_run(result.run_id)
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, sorted(system)
    assert run.info.status == "FINISHED"


def test_system_metrics_can_be_switched_off(tmp_path, store_uri):
    result = run_job(tmp_path, store_uri, "tracking.system_metrics_every_s=0")
    metrics = mlflow_client(store_uri).get_run(result.run_id).data.metrics
    assert not any(k.startswith("system/") for k in metrics)
