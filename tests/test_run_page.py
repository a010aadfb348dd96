"""What a run's MLflow page shows: system metrics (even for a run shorter than one sampling interval) and a
description on its overview."""

from __future__ import annotations

from helpers import mlflow_client, run_job


def test_a_run_shorter_than_the_sampling_interval_still_has_its_system_metrics(tmp_path, store_uri):
    result = run_job(tmp_path, store_uri, "tracking.system_metrics_every_s=3600")  # one interval: an hour
    run = mlflow_client(store_uri).get_run(result.run_id)
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, sorted(system)
    assert run.info.status == "FINISHED"


def test_every_run_describes_itself_on_its_overview_page(tmp_path, store_uri, capsys):
    """mlflow.note.content: what the MLflow UI shows as the run's description; the link printed opens that page
    in the model-training view."""
    result = run_job(tmp_path, store_uri, "strategy=finetune", "tracking.system_metrics_every_s=0")
    assert f"/runs/{result.run_id}?workflowType=machine_learning" in capsys.readouterr().out
    client = mlflow_client(store_uri)
    run = client.get_run(result.run_id)
    note = run.data.tags["mlflow.note.content"]
    foundation = run.data.tags["trainwise.foundation_run"]
    assert note.startswith("**finetune** of `small_cnn` on `digits`: ")
    assert f"Weights from the foundation run `{foundation}`" in note
    assert f"test accuracy **{100 * run.data.metrics['test/acc']:.2f} %** (the best validation epoch)" in note
    assert "Weights from random initialisation" in client.get_run(foundation).data.tags["mlflow.note.content"]
    assert not any(k.startswith("system/") for k in run.data.metrics)  # tracking.system_metrics_every_s=0: off


def test_a_model_the_store_refuses_is_a_warning_and_the_run_still_finishes(tmp_path, store_uri, monkeypatch):
    """Seen against a real server: a refused model version left the foundation's run RUNNING."""
    import trainwise.tracking.record as record

    def refused(*args, **kwargs):
        raise RuntimeError("INVALID_PARAMETER_VALUE: refused by the store")

    monkeypatch.setattr(record, "log_model", refused)
    result = run_job(tmp_path, store_uri, "strategy=full")
    run = mlflow_client(store_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["trainwise.model_error"] == "INVALID_PARAMETER_VALUE: refused by the store"
