"""The report is built from MLflow alone: a store holding known runs gives known numbers."""

from __future__ import annotations

import statistics

import pytest

from helpers import mlflow_client
from trainwise.report import build_report
from trainwise.tracking import open_store


def _job(
    client, experiment_id, parent_id, strategy, seed, acc, fit, fraction="1.0", foundation=None, status="FINISHED",
    settings=None,
):  # fmt: skip
    tags = {
        "trainwise.role": "job",
        "trainwise.strategy": strategy,
        "trainwise.model": "small_cnn",
        "trainwise.dataset": "glyphs" if strategy == "full" else "digits",
        "mlflow.parentRunId": parent_id,
    }
    if foundation:
        tags["trainwise.foundation_run"] = foundation
    if settings:  # what trainwise logs: the setting's hash as a tag, the keys as params
        tags["trainwise.setting"] = "-".join(f"{k}={v}" for k, v in sorted(settings.items()))
    run = client.create_run(experiment_id, tags=tags)
    rid = run.info.run_id
    params = {
        "seed": str(seed),
        "dataset.train_fraction": fraction,
        "strategy.data": "source" if strategy == "full" else "dataset",
        "strategy.weights": "pretrained" if foundation else "random",
        "data.train_size": str(int(1000 * float(fraction))),
        **(settings or {}),
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
    assert list(rows) == ["scratch", "finetune"]  # the foundation's figures are on its source data: apart
    assert rows["scratch"][8] == f"{0.92:.3f} ± {statistics.stdev([0.90, 0.92, 0.94]):.3f}"
    assert rows["finetune"][8] == f"{0.97:.3f} ± {statistics.stdev([0.96, 0.97, 0.98]):.3f}"
    assert rows["finetune"][2] == "foundation" and rows["scratch"][2] == "random init"
    assert rows["finetune"][3] == "10 / 100"
    assert rows["finetune"][11] == "45.0 (40.0 + 5.0)"  # total cost with and without pretraining
    assert rows["scratch"][12] == "3"  # the FAILED run is not averaged in...
    assert len(report.failed_runs) == 1  # ...but the report marks it
    summary = " ".join(report.summary)
    assert "Best test accuracy on the target data: finetune" in summary
    assert "Foundation full on glyphs (1,000 images; its source data, not the target): test acc 0.800" in summary
    assert "3 target run(s) here start from it" in summary
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
    assert rows["finetune"][11] == "? (? + 5.0)"  # one seed's foundation is a file: not "45.0 (40.0 + 5.0)"
    assert rows["linear_probe"][11] == "? (? + 2.0)"  # not "2.0", which reads as a run without pretraining
    assert rows["scratch"][11] == "10.0"
    summary = " ".join(report.summary)
    assert "2 run(s) started from weights whose training time is not in this store" in summary
    assert "report.md" in {p.name for p in report.files}
    assert "? (? + 5.0)" in (tmp_path / "report.md").read_text()


def test_runs_of_different_settings_are_rows_of_their_own_labelled_by_what_differs(store_uri, tmp_path):
    """An lr sweep of fine-tunes is two rows, not one 'finetune' mean pooling both learning rates."""
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("lr-sweep")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    full = _job(client, experiment_id, parent, "full", 0, 0.8, 40.0)
    for seed in (0, 1):
        _job(client, experiment_id, parent, "scratch", seed, 0.90, 10.0, settings={"optimizer.lr": "0.01"})
        for lr, acc in (("0.01", 0.95), ("0.001", 0.70)):
            _job(client, experiment_id, parent, "finetune", seed, acc, 5.0, foundation=full,
                 settings={"optimizer.lr": lr})  # fmt: skip
    report = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path)
    rows = {cells[0]: cells for cells in report.cells}
    assert list(rows) == ["scratch", "finetune lr=0.001", "finetune lr=0.01"]
    assert rows["finetune lr=0.01"][8] == "0.950 ± 0.000" and rows["finetune lr=0.01"][12] == "2"
    assert rows["finetune lr=0.001"][8] == "0.700 ± 0.000"


def test_intervals_and_the_paired_comparison_are_those_of_scipy(known_sweep, tmp_path):
    from scipy import stats

    uri, parent = known_sweep
    report = build_report(open_store(uri), sweep_run_id=parent, out_dir=tmp_path)
    rows = {cells[0]: cells for cells in report.cells}
    scratch = [0.90, 0.92, 0.94]
    low, high = stats.t.interval(0.95, 2, loc=statistics.fmean(scratch), scale=stats.sem(scratch))
    assert rows["scratch"][9] == f"{low:.3f} to {high:.3f}"
    # finetune - scratch, seeds matched: 0.06, 0.05, 0.04
    finetune = [0.96, 0.97, 0.98]
    differences = [f - s for f, s in zip(finetune, scratch, strict=True)]
    low, high = stats.t.interval(0.95, 2, loc=statistics.fmean(differences), scale=stats.sem(differences))
    p_value = stats.ttest_rel(finetune, scratch).pvalue
    line = next(line for line in report.summary if line.startswith("finetune − scratch"))
    assert line == (f"finetune − scratch: +5.0 points (95 % CI {100 * low:+.1f} to {100 * high:+.1f}, "
                    f"paired t-test p={p_value:.3f}, 3 seeds).")  # fmt: skip
    assert "leaves out the pretraining's randomness" in " ".join(report.summary)


def test_an_interval_spanning_zero_and_a_single_seed_are_said_plainly(store_uri, tmp_path):
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("unclear")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    full = _job(client, experiment_id, parent, "full", 0, 0.8, 40.0)
    for seed, (scratch, finetune) in enumerate([(0.90, 0.93), (0.92, 0.90), (0.94, 0.95)]):
        _job(client, experiment_id, parent, "scratch", seed, scratch, 10.0, fraction="1.0")
        _job(client, experiment_id, parent, "finetune", seed, finetune, 5.0, fraction="1.0", foundation=full)
    _job(client, experiment_id, parent, "scratch", 0, 0.50, 10.0, fraction="0.1")
    _job(client, experiment_id, parent, "finetune", 0, 0.60, 5.0, fraction="0.1", foundation=full)
    summary = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path).summary
    assert any(line.startswith("finetune − scratch: +0.7 points") and "no clear difference at 3 seeds" in line
               for line in summary)  # fmt: skip
    assert any(line.startswith("finetune @ 0.1 − scratch @ 0.1: +10.0 points at 1 seed; nothing can be said")
               for line in summary)  # fmt: skip


@pytest.mark.parametrize(
    ("native", "used", "lost"),
    [
        ((3, 64), (1, 8), "its colour and 98 % of its pixels"),  # photos through the glyphs foundation
        ((3, 32), (3, 32), None),
        ((1, 28), (1, 8), "92 % of its pixels"),
        ((1, 8), (3, 32), None),  # upsampling and repeating a grey channel lose nothing
        ((3, 64), (3, 32), None),  # a quarter of the pixels kept: not flagged
    ],
)
def test_what_a_fine_tune_throws_away_of_the_target_is_named(native, used, lost):
    from trainwise.data.factory import adaptation_loss

    assert adaptation_loss(native, used) == lost


def test_an_experiment_report_counts_each_setting_and_seed_once_unless_asked_to_pool(store_uri, tmp_path):
    """The same sweep run twice in one experiment, plus a reproduction: two seeds, not five."""
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("twice")
    for _ in range(2):
        parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
        for seed in (0, 1):
            run_id = _job(client, experiment_id, parent, "scratch", seed, 0.9, 10.0, settings={"optimizer.lr": "0.01"})
    client.set_tag(_job(client, experiment_id, parent, "scratch", 1, 0.9, 10.0, settings={"optimizer.lr": "0.01"}),
                   "trainwise.reproduced_from", run_id)  # fmt: skip
    one_sweep = build_report(open_store(store_uri), experiment="twice", out_dir=tmp_path / "a")
    assert [cells[12] for cells in one_sweep.cells] == ["2"]
    assert {r.run_id for r in one_sweep.records} >= {run_id}  # the newest of each seed
    pooled = build_report(open_store(store_uri), experiment="twice", out_dir=tmp_path / "b", pool=True)
    assert [cells[12] for cells in pooled.cells] == ["5"]
