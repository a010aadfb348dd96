"""The report is built from MLflow alone: a store holding known runs gives known numbers."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param

from helpers import mlflow_client
from trainwise.report import build_report
from trainwise.tracking import open_store


def _job(
    client, experiment_id, parent_id, strategy, seed, acc, fit, fraction="1.0", foundation=None, status="FINISHED",
    settings=None, curve=None, val_size=None,
):  # fmt: skip
    """A job run as trainwise records it. curve: (val/acc, cost/fit_seconds) at each epoch's end (default: half
    the accuracy at half the time, then `acc` at `fit`), at steps 10, 20, ..."""
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
        "data.val_size": str(val_size if val_size is not None else 100),
        **(settings or {}),
    }
    curve = curve or [(acc / 2, fit / 2), (acc, fit)]
    points = []
    for epoch, (value, seconds) in enumerate(curve):
        points += [("val/acc", value, 10 * (epoch + 1)), ("cost/fit_seconds", seconds, 10 * (epoch + 1))]
    metrics = {"test/acc": acc, "test/loss": 1 - acc, "val/acc_best": max(v for v, _ in curve),
               "model/params_total": 100.0, "model/params_trainable": 10.0 if foundation else 100.0}  # fmt: skip
    points += [(key, value, 10 * len(curve)) for key, value in metrics.items()]
    now = int(time.time() * 1000)
    client.log_batch(
        rid,
        metrics=[Metric(k, v, now + i, step) for i, (k, v, step) in enumerate(points)],
        params=[Param(k, str(v)) for k, v in params.items()],
    )  # fmt: skip  one call, as trainwise does
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
    # Every run reaches 90 % validation accuracy: scratch at its 10 s epoch, the fine-tunes at their 5 s one.
    assert (
        "Time to 90.0 % validation accuracy (the highest every strategy reaches): scratch 10.0 s (20 steps); "
        "finetune 5.0 s (20 steps)." in summary
    )
    assert "Pretraining for finetune (40.0 s) pays back after 8.0 target tasks like this one" in summary  # 40 / 5
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
    assert (
        "These intervals leave out the pretraining's randomness: all seeds of a fine-tune start from one "
        "foundation (foundation.seed='${seed}' gives each seed its own)." in report.summary
    )


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


def test_time_to_accuracy_and_payback_read_the_metric_histories(store_uri, tmp_path):
    """The fine-tune starts higher but climbs slower: at the level both reach it is the slower one, so the
    pretraining never pays back in time, however far ahead it starts."""
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("slow-climb")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    full = _job(client, experiment_id, parent, "full", 0, 0.8, 30.0)
    for seed in (0, 1):
        _job(client, experiment_id, parent, "scratch", seed, 0.95, 6.0,
             curve=[(0.5, 2.0), (0.93, 4.0), (0.95, 6.0)])  # fmt: skip
        _job(client, experiment_id, parent, "finetune", seed, 0.94, 9.0, foundation=full,
             curve=[(0.8, 3.0), (0.9, 6.0), (0.94, 9.0)])  # fmt: skip
    summary = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path / "a").summary
    assert (
        "Time to 94.0 % validation accuracy (the highest every strategy reaches): scratch 6.0 s (30 steps); "
        "finetune 9.0 s (30 steps)." in summary
    )
    assert (
        "Pretraining for finetune (30.0 s) never pays back in time: finetune takes 9.0 s to reach 94.0 %, "
        "scratch 6.0 s." in summary
    )
    # At a level chosen lower (report.target_acc / --target-acc) the fine-tune is there first.
    summary = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path / "b", target_acc=0.9).summary
    assert (
        "Time to 90.0 % validation accuracy (report.target_acc): scratch 4.0 s (20 steps); finetune 6.0 s "
        "(20 steps)." in summary
    )
    summary = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path / "c", target_acc=0.8).summary
    assert any(
        line.startswith("Pretraining for finetune (30.0 s) pays back after 30.0 target tasks") for line in summary
    )  # fmt: skip  30 s / (4 s - 3 s)
    summary = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path / "d", target_acc=0.99).summary
    assert (
        "Time to 99.0 % validation accuracy (report.target_acc): scratch never reached; finetune never "
        "reached." in summary
    )


def test_labels_saved_interpolates_the_scratch_curve_in_log_size():
    from trainwise.report.verdict import scratch_size_for

    curve = [(10, 0.50), (100, 0.80), (1000, 0.95)]
    assert scratch_size_for(curve, 0.80) == 100
    assert scratch_size_for(curve, 0.65) == pytest.approx(10**1.5)  # halfway in accuracy, halfway in log size
    assert scratch_size_for(curve, 0.875) == pytest.approx(10**2.5)
    assert scratch_size_for(curve, 0.40) == 10  # already there at the smallest size
    assert scratch_size_for(curve, 0.97) is None  # more than the largest size measured


def _efficiency_store(store_uri, gaps, seeds=(0, 1, 2)):
    """Scratch and finetune at 3 sizes (100, 300, 1,000 labelled images); `gaps`: finetune - scratch per size
    and seed."""
    client = mlflow_client(store_uri)
    artifacts = Path(store_uri.removeprefix("sqlite:///")).parent / "artifacts"  # not ./mlruns in the working folder
    experiment_id = client.create_experiment("efficiency-verdict", artifact_location=artifacts.as_uri())
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    full = _job(client, experiment_id, parent, "full", 0, 0.5, 50.0)
    scratch_acc = {"0.1": 0.60, "0.3": 0.80, "1.0": 0.90}
    for (fraction, base), size_gaps in zip(scratch_acc.items(), gaps, strict=True):
        for seed in seeds:
            s, f = base + 0.01 * seed, base + 0.01 * seed + size_gaps[seed]
            _job(client, experiment_id, parent, "scratch", seed, s, 10.0, fraction=fraction, val_size=0,
                 curve=[(s / 2, 5.0), (s, 10.0)])  # fmt: skip
            _job(client, experiment_id, parent, "finetune", seed, f, 10.0, fraction=fraction, val_size=0,
                 foundation=full, curve=[(f / 2, 2.0), (f, 10.0)])  # fmt: skip
    return client, parent


def test_the_verdict_names_the_winner_per_size_where_the_advantage_ends_and_the_labels_saved(store_uri, tmp_path):
    # +15 points at 100 images, +5 at 300 (both clear), noise around 0 at 1,000.
    gaps = [(0.14, 0.15, 0.16), (0.04, 0.05, 0.06), (0.02, -0.03, 0.04)]
    _, parent = _efficiency_store(store_uri, gaps)
    report = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path)
    verdict = report.verdict
    assert verdict[0] == ("finetune beats scratch clearly at 100 and 300 labelled images (+15.0, +5.0 points; 95 % "
                          "intervals above 0); there is no clear difference at 1,000 (3 seeds).")  # fmt: skip
    assert verdict[1] == "finetune's clear advantage ends between 300 and 1,000 labelled images."
    assert verdict[2] == "At 1,000 labelled images the best test accuracy is finetune's 92.0 % (scratch 91.0 %)."
    # scratch reaches finetune's 76 % at 100 images between 100 (61 %) and 300 (81 %): 10^(2 + 0.75 log10 3)
    labels = next(line for line in verdict if line.startswith("Labels saved"))
    assert labels == "Labels saved: scratch needs about 228 (128 more labels) to match finetune's 76.0 % at 100."
    md = (tmp_path / "report.md").read_text()
    assert verdict[0] in md.splitlines()[2]  # the report opens with it


def test_the_verdict_says_when_scratch_wins_and_when_one_seed_says_nothing(store_uri, tmp_path):
    gaps = [(-0.05, -0.06, -0.04), (-0.05, -0.06, -0.04), (-0.05, -0.06, -0.04)]
    _, parent = _efficiency_store(store_uri, gaps)
    verdict = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path / "a").verdict
    assert verdict[0] == "scratch beats finetune clearly at 100, 300 and 1,000 (-5.0, -5.0, -5.0 points)."
    assert not any("advantage ends" in line for line in verdict)


def test_one_seed_verdict_says_nothing_can_be_concluded(store_uri, tmp_path):
    _, parent = _efficiency_store(store_uri, [(0.1,), (0.1,), (0.1,)], seeds=(0,))
    verdict = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path).verdict
    assert verdict[0] == ("finetune − scratch in test accuracy: +10.0 points at 100, +10.0 points at 300, +10.0 "
                          "points at 1,000 labelled images, at one seed each: nothing can be said about which is "
                          "better (run 3 or more seeds).")  # fmt: skip


def test_the_comparison_uses_each_strategys_best_setting_by_validation_not_test(store_uri, tmp_path):
    """Two fine-tune learning rates: the one with the better validation accuracy is compared, even though the
    other happens to test higher (choosing by test accuracy would tune on the test split)."""
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("by-validation")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    full = _job(client, experiment_id, parent, "full", 0, 0.8, 40.0)
    for seed in (0, 1, 2):
        _job(client, experiment_id, parent, "scratch", seed, 0.90 + 0.01 * seed, 10.0,
             settings={"optimizer.lr": "0.01"})  # fmt: skip
        _job(
            client,
            experiment_id,
            parent,
            "finetune",
            seed,
            0.99,
            5.0,
            foundation=full,
            settings={"optimizer.lr": "0.1"},
            curve=[(0.3, 2.5), (0.6, 5.0)],
        )  # fmt: skip  tests high, validates low
        _job(client, experiment_id, parent, "finetune", seed, 0.80 + 0.01 * seed, 5.0, foundation=full,
             settings={"optimizer.lr": "0.001"}, curve=[(0.5, 2.5), (0.97, 5.0)])  # fmt: skip
    verdict = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path).verdict
    assert verdict[0].startswith("scratch beats finetune lr=0.001 clearly")


def test_a_sweeps_description_in_mlflow_is_the_verdict(store_uri, tmp_path, monkeypatch):
    from trainwise.sweep import SWEEP_RUN_ENV, SWEEP_STORE_ENV, finish_sweep

    client, parent = _efficiency_store(store_uri, [(0.14, 0.15, 0.16), (0.04, 0.05, 0.06), (0.02, -0.03, 0.01)])
    client.set_tag(parent, "trainwise.sweep_dir", str(tmp_path))
    monkeypatch.setenv(SWEEP_RUN_ENV, parent)
    monkeypatch.setenv(SWEEP_STORE_ENV, store_uri)
    finish_sweep()
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert note.startswith("finetune beats scratch clearly at 100 and 300 labelled images")
    assert "- Foundation full on glyphs" in note


def test_an_optuna_search_lists_its_trials_and_compares_the_best_trial(store_uri, tmp_path):
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("optuna")
    sweeper = "hydra_plugins.trainwise_optuna.sweeper.TrainwiseOptunaSweeper"
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep", "trainwise.sweeper": sweeper})
    parent = parent.info.run_id
    full = _job(client, experiment_id, parent, "full", 0, 0.8, 40.0)
    trials = [("0.001", 0.90), ("0.1", 0.50), ("0.01", 0.95), ("0.003", 0.93)]  # (lr, validation = test accuracy)
    for number, (lr, acc) in enumerate(trials):
        run_id = _job(client, experiment_id, parent, "finetune", 0, acc, 5.0, foundation=full,
                      settings={"optimizer.lr": lr})  # fmt: skip
        client.set_tag(run_id, "trainwise.job_num", str(number))
    failed = _job(client, experiment_id, parent, "finetune", 0, 0.0, 1.0, foundation=full, status="FAILED",
                  settings={"optimizer.lr": "1.0"})  # fmt: skip
    client.set_tag(failed, "trainwise.job_num", "4")
    report = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path)
    assert [cells[0] for cells in report.cells] == ["finetune lr=0.01"]  # the best trial, by validation
    assert [(c[0], c[2], c[3], c[4], c[6]) for c in report.trials] == [
        ("0", "lr=0.001", "0.9000", "finished", ""),
        ("1", "lr=0.1", "0.5000", "finished", ""),
        ("2", "lr=0.01", "0.9500", "finished", "best"),
        ("3", "lr=0.003", "0.9300", "finished", ""),
        ("4", "-", "-", "failed", ""),
    ]
    markdown = (tmp_path / "report.md").read_text()
    assert (
        "## Settings searched" in markdown and "| 2 | finetune | lr=0.01 | 0.9500 | finished | 5.0 | best |" in markdown
    )


def test_a_grid_over_learning_rates_keeps_every_setting_in_the_table_and_lists_them_as_searched(store_uri, tmp_path):
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("grid")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    for lr, acc in (("0.01", 0.9), ("0.001", 0.8)):
        _job(client, experiment_id, parent, "scratch", 0, acc, 5.0, settings={"optimizer.lr": lr})
    report = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path)
    assert [cells[0] for cells in report.cells] == ["scratch lr=0.001", "scratch lr=0.01"]
    assert [(cells[2], cells[6]) for cells in report.trials] == [("lr=0.001", ""), ("lr=0.01", "best")]


def test_the_verdict_places_no_crossover_where_the_advantage_comes_and_goes(store_uri, tmp_path):
    # clear at 100, unclear at 300, clear again at 1,000: no single point where the advantage ends
    _, parent = _efficiency_store(store_uri, [(0.14, 0.15, 0.16), (0.04, -0.05, 0.06), (0.02, 0.03, 0.025)])
    verdict = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path).verdict
    assert verdict[0].startswith("finetune beats scratch clearly at 100 and 1,000 labelled images")
    assert not any("advantage ends" in line or "every size" in line for line in verdict)


def test_the_verdict_says_when_the_advantage_holds_at_every_size(store_uri, tmp_path):
    _, parent = _efficiency_store(store_uri, [(0.14, 0.15, 0.16), (0.04, 0.05, 0.06), (0.02, 0.03, 0.025)])
    verdict = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path).verdict
    assert verdict[1] == "finetune is clearly ahead at every size measured."


def test_runs_varying_learning_rate_and_freezing_are_four_rows_with_their_seeds_counted(store_uri, tmp_path):
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("lr-and-freeze")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    full = _job(client, experiment_id, parent, "full", 0, 0.8, 40.0)
    for seed in (0, 1, 2):
        for lr in ("0.01", "0.001"):
            for freeze in ("none", "backbone"):
                _job(client, experiment_id, parent, "finetune", seed, 0.9, 5.0, foundation=full,
                     settings={"optimizer.lr": lr, "strategy.freeze": freeze})  # fmt: skip
    report = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path)
    rows = {cells[0]: cells[12] for cells in report.cells}
    assert rows == {
        "finetune lr=0.001 freeze=backbone": "3",
        "finetune lr=0.001 freeze=none": "3",
        "finetune lr=0.01 freeze=backbone": "3",
        "finetune lr=0.01 freeze=none": "3",
    }


def test_a_sweeps_report_target_acc_sets_the_level_time_to_accuracy_is_measured_at(store_uri, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from trainwise.sweep import SWEEP_RUN_ENV, SWEEP_STORE_ENV, SweepCallback

    client, parent = _efficiency_store(store_uri, [(0.14, 0.15, 0.16), (0.04, 0.05, 0.06), (0.02, -0.03, 0.01)])
    client.set_tag(parent, "trainwise.sweep_dir", str(tmp_path))
    monkeypatch.setenv(SWEEP_RUN_ENV, parent)
    monkeypatch.setenv(SWEEP_STORE_ENV, store_uri)
    SweepCallback().on_multirun_end(OmegaConf.create({"report": {"target_acc": 0.3}}))  # report.target_acc=0.3
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert "Time to 30.0 % validation accuracy at 1,000 labelled images (report.target_acc)" in note


def test_the_best_run_is_chosen_among_the_runs_with_the_most_labels(store_uri, tmp_path):
    """A run of a small budget may score 100 % on its 10 validation images: not comparable with a validation
    accuracy on 100 images, and not the run to deploy."""
    client = mlflow_client(store_uri)
    experiment_id = client.create_experiment("best-of-most")
    parent = client.create_run(experiment_id, tags={"trainwise.role": "sweep"}).info.run_id
    _job(client, experiment_id, parent, "scratch", 0, 1.0, 1.0, fraction="0.05", val_size=10)
    full_data = _job(client, experiment_id, parent, "scratch", 0, 0.95, 5.0, fraction="1.0", val_size=100)
    _job(client, experiment_id, parent, "scratch", 1, 0.93, 5.0, fraction="1.0", val_size=100)
    report = build_report(open_store(store_uri), sweep_run_id=parent, out_dir=tmp_path)
    assert report.best_run().run_id == full_data


def test_the_printed_comparison_fits_100_columns_and_report_md_keeps_every_column(known_sweep, tmp_path, capsys):
    uri, parent = known_sweep
    report = build_report(open_store(uri), sweep_run_id=parent, out_dir=tmp_path)
    report.print()
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 100
    assert "95 % CI" in printed and "0.970 ± 0.010" in printed
    assert "| trainable / total params |" in (tmp_path / "report.md").read_text()
