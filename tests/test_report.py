"""The report is built from MLflow alone: a store holding known runs gives known numbers."""

from __future__ import annotations

import statistics

import pytest

from helpers import mlflow_client
from trainwise.report import build_report
from trainwise.tracking import open_store


def _job(
    client, experiment_id, parent_id, strategy, seed, acc, fit, fraction="1.0", foundation=None, status="FINISHED"
):
    tags = {
        "trainwise.role": "job",
        "trainwise.strategy": strategy,
        "trainwise.model": "small_cnn",
        "trainwise.dataset": "glyphs" if strategy == "full" else "digits",
        "mlflow.parentRunId": parent_id,
    }
    if foundation:
        tags["trainwise.foundation_run"] = foundation
    run = client.create_run(experiment_id, tags=tags)
    rid = run.info.run_id
    params = {
        "seed": str(seed),
        "dataset.train_fraction": fraction,
        "strategy.data": "source" if strategy == "full" else "dataset",
        "strategy.weights": "pretrained" if foundation else "random",
        "data.train_size": str(int(1000 * float(fraction))),
    }
    for key, value in params.items():
        client.log_param(rid, key, value)
    for epoch, value in enumerate([acc / 2, acc]):
        client.log_metric(rid, "val/acc", value, step=epoch)
    metrics = {"test/acc": acc, "test/loss": 1 - acc, "cost/fit_seconds": fit, "val/acc_best": acc,
               "model/params_total": 100.0, "model/params_trainable": 10.0 if foundation else 100.0}  # fmt: skip
    for key, value in metrics.items():
        client.log_metric(rid, key, value)
    client.set_terminated(rid, status)
    return rid


@pytest.fixture
def known_sweep(store_uri):
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("known")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    full = _job(client, experiment_id, parent, "full", 0, 0.8, 40.0)
    for seed, acc in enumerate([0.90, 0.92, 0.94]):
        _job(client, experiment_id, parent, "scratch", seed, acc, 10.0)
    for seed, acc in enumerate([0.96, 0.97, 0.98]):
        _job(client, experiment_id, parent, "finetune", seed, acc, 5.0, foundation=full)
    _job(client, experiment_id, parent, "scratch", 9, 0.0, 1.0, status="FAILED")
    return store_uri, parent


def test_table_rows_are_mean_and_std_over_seeds(known_sweep, tmp_path):
    uri, parent = known_sweep
    report = build_report(open_store(uri), sweep_run_id=parent, out_dir=tmp_path)
    rows = {cells[0]: cells for cells in report.cells}
    assert list(rows) == ["scratch", "full", "finetune"]
    assert rows["scratch"][8] == f"{0.92:.3f} ± {statistics.stdev([0.90, 0.92, 0.94]):.3f}"
    assert rows["finetune"][8] == f"{0.97:.3f} ± {statistics.stdev([0.96, 0.97, 0.98]):.3f}"
    assert rows["finetune"][2] == "foundation" and rows["scratch"][2] == "random init"
    assert rows["finetune"][3] == "10 / 100"
    assert rows["finetune"][10] == "45.0 (40.0 + 5.0)"  # total cost with and without pretraining
    assert rows["scratch"][11] == "3"  # the FAILED run is not averaged in...
    assert len(report.failed_runs) == 1  # ...but the report marks it
    summary = " ".join(report.summary)
    assert "Best test accuracy on the target data: finetune" in summary
    assert "did not finish" in summary
    assert "pays for itself in time after 8.0 fine-tunes" in summary  # 40 s / (10 s - 5 s), failed run left out
    assert report.best_run().metrics["val/acc_best"] == 0.98
    assert {p.name for p in report.files} >= {"report.md", "report.html", "val_acc.png", "accuracy_vs_cost.png"}


def test_data_efficiency_plot_appears_when_fractions_vary(store_uri, tmp_path):
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("efficiency")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    for fraction in ("0.01", "0.1", "1.0"):
        for seed in range(2):
            _job(client, experiment_id, parent, "scratch", seed, 0.5 + float(fraction) / 3, 1.0, fraction=fraction)
    report = build_report(open_store(store_uri), experiment="efficiency", out_dir=tmp_path)
    assert [c[0] for c in report.cells] == ["scratch @ 0.01", "scratch @ 0.1", "scratch"]
    assert (tmp_path / "data_efficiency.png").is_file()


def test_unknown_sweep_or_experiment_is_a_clear_error(store_uri):
    from trainwise.errors import UserError

    store = open_store(store_uri)
    with pytest.raises(UserError, match="no such run"):
        build_report(store, sweep_run_id="0" * 32)
    with pytest.raises(UserError, match="no such experiment"):
        build_report(store, experiment="nope")


def test_best_run_is_chosen_on_the_target_data_not_the_foundations(store_uri, tmp_path):
    """A foundation's val/acc_best is measured on the source data: another dataset, not comparable."""
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("easy-source")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    full = _job(client, experiment_id, parent, "full", 0, 0.99, 40.0)  # an easy source dataset
    tuned = _job(client, experiment_id, parent, "finetune", 0, 0.90, 5.0, foundation=full)
    _job(client, experiment_id, parent, "scratch", 0, 0.85, 10.0)
    report = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path)
    assert report.best_run().run_id == tuned


def test_a_missing_foundation_cost_makes_the_total_unknown_not_smaller(store_uri, tmp_path):
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("missing-foundation")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    full = _job(client, experiment_id, parent, "full", 0, 0.8, 40.0)
    _job(client, experiment_id, parent, "finetune", 0, 0.96, 5.0, foundation=full)
    _job(client, experiment_id, parent, "finetune", 1, 0.97, 5.0, foundation=str(tmp_path / "foundation.ckpt"))
    elsewhere = client.create_run(client.create_experiment("elsewhere")).info.run_id  # a run that logged no cost
    _job(client, experiment_id, parent, "linear_probe", 0, 0.9, 2.0, foundation=elsewhere)
    _job(client, experiment_id, parent, "scratch", 0, 0.9, 10.0)
    report = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path)
    rows = {cells[0]: cells for cells in report.cells}
    assert rows["finetune"][10] == "? (? + 5.0)"  # one seed's foundation is a file: not "45.0 (40.0 + 5.0)"
    assert rows["linear_probe"][10] == "? (? + 2.0)"  # not "2.0", which reads as a run without pretraining
    assert rows["scratch"][10] == "10.0"
    summary = " ".join(report.summary)
    assert "2 run(s) started from weights whose training time is not in this store" in summary
    assert "per second of training, pretraining included: scratch" in summary  # the unknown totals are not ranked
    assert "report.md" in {p.name for p in report.files}
    assert "? (? + 5.0)" in (tmp_path / "report.md").read_text()
