"""tuning.enabled: each strategy's learning rate is chosen on validation by a search of its own, recorded in
MLflow, and reused by every job of the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import compose_config, mlflow_client, run_job
from trainwise.errors import UserError
from trainwise.tuning import grid, tuning_key

TUNED = (
    "tuning.enabled=true",
    "tuning.lr=[0.00001,0.01]",
    "tuning.backbone_lr_mult=[1.0]",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=8",
)


def test_every_strategy_searches_the_same_grid_and_a_frozen_backbone_skips_the_multiplier():
    def points(*overrides):
        return grid(compose_config("tuning.lr=[0.001,0.01]", "tuning.backbone_lr_mult=[0.1,1.0]", *overrides))

    assert len(points("strategy=scratch")) == len(points("strategy=finetune")) == 4
    assert points("strategy=linear_probe") == [{"optimizer.lr": 0.001}, {"optimizer.lr": 0.01}]
    assert {"optimizer.lr": 0.01, "strategy.backbone_lr_mult": 0.1} in points("strategy=finetune")


def test_a_search_serves_every_seed_and_lr_of_a_setting_but_not_another_strategy():
    key = tuning_key(compose_config("tuning.enabled=true"))
    assert tuning_key(compose_config("tuning.enabled=true", "seed=3", "optimizer.lr=0.5")) == key
    assert tuning_key(compose_config("tuning.enabled=true", "strategy=finetune")) != key
    assert tuning_key(compose_config("tuning.enabled=true", "dataset.train_fraction=0.5")) != key
    fixed = ("tuning.enabled=true", "tuning.train_fraction=1.0")  # one search for every data size
    assert tuning_key(compose_config(*fixed, "dataset.train_fraction=0.5")) == tuning_key(compose_config(*fixed))


def test_the_chosen_learning_rate_is_the_trial_with_the_best_validation_accuracy(tmp_path, store_uri):
    first = run_job(tmp_path / "a", store_uri, *TUNED, "seed=0")
    second = run_job(tmp_path / "b", store_uri, *TUNED, "seed=1")
    client = mlflow_client(store_uri)
    searches = client.search_runs(["1"], "tags.`trainwise.role` = 'tuning'")
    assert len(searches) == 1 and searches[0].info.status == "FINISHED"  # the second job reused the search
    search = searches[0]
    trials = client.search_runs(["1"], f"tags.`mlflow.parentRunId` = '{search.info.run_id}'")
    assert len(trials) == 2 and {t.data.tags["trainwise.role"] for t in trials} == {"tuning_trial"}
    assert {t.data.params["seed"] for t in trials} == {"0"}  # tuning.seed
    assert not any("test/acc" in t.data.metrics for t in trials)  # chosen on validation: never tested
    best = max(trials, key=lambda t: t.data.metrics["val/acc_best"])
    worst = min(trials, key=lambda t: t.data.metrics["val/acc_best"])
    assert best.data.metrics["val/acc_best"] > worst.data.metrics["val/acc_best"]  # the grid tells them apart
    chosen = best.data.params["optimizer.lr"]
    assert search.data.params["chosen.optimizer.lr"] == str(float(chosen))
    recorded = json.loads(Path(client.download_artifacts(search.info.run_id, "tuning/trials.json", str(tmp_path)))
                          .read_text())  # fmt: skip
    assert [t["optimizer.lr"] for t in recorded] == [0.00001, 0.01]
    for result in (first, second):
        job = client.get_run(result.run_id)
        assert job.data.tags["trainwise.tuning_run"] == search.info.run_id
        assert float(job.data.params["optimizer.lr"]) == float(chosen)
        assert job.data.tags["trainwise.role"] == "job"


def test_tuning_at_a_size_without_a_validation_split_says_what_to_set(tmp_path, store_uri):
    with pytest.raises(UserError, match=r"no validation split to choose on; set tuning.train_fraction"):
        run_job(tmp_path, store_uri, *TUNED, "dataset.train_fraction=0.01", "dataset.val_from_labelled=true")
    search = mlflow_client(store_uri).search_runs(["1"], "tags.`trainwise.role` = 'tuning'")[0]
    assert search.info.status == "FAILED"  # not left RUNNING, and not reused by the next job


def test_a_bad_grid_is_one_line_naming_the_key():
    from trainwise.config import validate

    with pytest.raises(UserError, match=r"tuning.lr=.* must be a list of positive numbers"):
        validate(compose_config("tuning.enabled=true", "tuning.lr=[0.1,-1]"))
