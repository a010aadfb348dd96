"""Each strategy end to end on profile=smoke, checked against what docs/tracking.md says MLflow holds for each run."""

from __future__ import annotations

from importlib import metadata

import pytest
import torch

from helpers import Terminal, compose_config, mlflow_client, run_job
from trainwise.strategies import foundation_hash

EPOCH_METRICS = {"train/loss", "val/loss", "val/acc"}
FINAL_METRICS = {
    "test/loss",
    "test/acc",
    "cost/fit_seconds",
    "cost/samples_per_second",
    "cost/peak_memory_mb",
    "model/params_total",
    "model/params_trainable",
}


def _assert_contract(client, run_id: str, strategy: str, dataset: str):
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"{strategy}-small_cnn-{dataset}"
    tags = run.data.tags
    assert tags["trainwise.strategy"] == strategy
    assert tags["trainwise.model"] == "small_cnn"
    assert tags["trainwise.dataset"] == dataset
    assert tags["trainwise.role"] == "job"
    assert len(tags["trainwise.config_hash"]) == 16
    assert tags["trainwise.version.torch"] == metadata.version("torch")  # the installed distribution's version...
    assert tags["trainwise.version.torch"].split("+")[0] == torch.__version__.split("+")[0]  # ...the running torch
    params = run.data.params
    assert params["strategy.name"] == strategy
    assert params["optimizer.lr"] and params["dataset.train_fraction"] and params["seed"]
    assert (EPOCH_METRICS | FINAL_METRICS) <= set(run.data.metrics)
    assert len(client.get_metric_history(run_id, "val/acc")) >= 1
    config = {a.path for a in client.list_artifacts(run_id, "config")}
    assert {"config/config.yaml", "config/overrides.yaml"} <= config
    checkpoints = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/best.ckpt", "checkpoints/last.ckpt"}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    return run


def test_scratch_records_the_whole_contract(tmp_path, store_uri):
    result = run_job(tmp_path, store_uri, "strategy=scratch")
    client = mlflow_client(store_uri)
    run = _assert_contract(client, result.run_id, "scratch", "digits")
    assert run.data.metrics["model/params_trainable"] == run.data.metrics["model/params_total"]
    text = client.download_artifacts(result.run_id, "config/config.yaml", str(tmp_path))
    assert "name: scratch" in open(text).read()
    (data,) = run.inputs.dataset_inputs  # the UI's Datasets column
    assert data.dataset.name == "digits" and len(data.dataset.digest) == 16
    assert '"train": ' in data.dataset.profile and data.tags[0].value == "training"
    import json

    classes = json.load(open(client.download_artifacts(result.run_id, "data/classes.json", str(tmp_path))))
    assert classes["classes"] == [str(d) for d in range(10)]
    assert sum(classes["counts"]["train"].values()) == int(run.data.params["data.train_size"])


def test_full_trains_on_the_source_with_the_foundation_budget(tmp_path, store_uri):
    result = run_job(tmp_path, store_uri, "strategy=full", "foundation.optimizer.lr=0.003")
    run = _assert_contract(mlflow_client(store_uri), result.run_id, "full", "glyphs")
    assert run.data.params["optimizer.lr"] == "0.003"  # the foundation's LR, not optimizer.lr's default
    assert run.data.params["data.num_classes"] == "62"
    assert run.data.tags["trainwise.foundation_hash"] == foundation_hash(
        compose_config("profile=smoke", "strategy=full", "foundation.optimizer.lr=0.003")
    )


@pytest.mark.slow  # ~16 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_finetune_auto_trains_a_foundation_once_then_reuses_it(tmp_path, store_uri):
    client = mlflow_client(store_uri)
    first = run_job(tmp_path / "a", store_uri, "strategy=finetune")
    _assert_contract(client, first.run_id, "finetune", "digits")
    full_runs = client.search_runs(["1"], "tags.`trainwise.strategy` = 'full'")
    assert len(full_runs) == 1 and full_runs[0].info.status == "FINISHED"
    foundation_run = full_runs[0].info.run_id
    assert client.get_run(first.run_id).data.tags["trainwise.foundation_run"] == foundation_run

    second = run_job(tmp_path / "b", store_uri, "strategy=finetune", "seed=1")
    assert client.get_run(second.run_id).data.tags["trainwise.foundation_run"] == foundation_run
    assert len(client.search_runs(["1"], "tags.`trainwise.strategy` = 'full'")) == 1

    # Different foundation settings: no match, so a new foundation is trained.
    third = run_job(tmp_path / "c", store_uri, "strategy=finetune", "foundation.optimizer.lr=0.01")
    assert client.get_run(third.run_id).data.tags["trainwise.foundation_run"] != foundation_run
    assert len(client.search_runs(["1"], "tags.`trainwise.strategy` = 'full'")) == 2


def test_finetune_from_a_runs_uri_and_a_local_file(tmp_path, store_uri):
    client = mlflow_client(store_uri)
    full = run_job(tmp_path / "full", store_uri, "strategy=full")
    from_uri = run_job(
        tmp_path / "u", store_uri, "strategy=finetune", f"strategy.pretrained=runs:/{full.run_id}/checkpoints/best.ckpt"
    )
    assert client.get_run(from_uri.run_id).data.tags["trainwise.foundation_run"] == full.run_id
    local = client.download_artifacts(full.run_id, "checkpoints/last.ckpt", str(tmp_path))
    from_file = run_job(tmp_path / "f", store_uri, "strategy=finetune", f"strategy.pretrained={local}")
    assert client.get_run(from_file.run_id).data.tags["trainwise.foundation_run"] == local


def test_a_crash_ends_the_run_failed_with_the_error(tmp_path, store_uri, monkeypatch):
    from trainwise.module import ClassificationModule

    def broken_step(self, batch, batch_idx):
        raise RuntimeError("simulated crash in training_step")

    monkeypatch.setattr(ClassificationModule, "training_step", broken_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(tmp_path, store_uri, "strategy=scratch")
    client = mlflow_client(store_uri)
    (run,) = client.search_runs(["1"])
    assert run.info.status == "FAILED"
    assert "simulated crash" in run.data.tags["trainwise.error"]
    assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_bad_pretrained_path_fails_before_any_run_exists(tmp_path, store_uri):
    from trainwise.errors import UserError

    with pytest.raises(UserError, match="no such file"):
        run_job(tmp_path, store_uri, "strategy=finetune", f"strategy.pretrained={tmp_path / 'missing.ckpt'}")
    client = mlflow_client(store_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]  # trainwise's, not MLflow's Default ("0")
    assert client.search_runs(experiments) == []  # nothing FINISHED, nothing RUNNING, in any experiment


def test_a_terminal_run_shows_each_epochs_loss_and_accuracy_on_the_progress_bar(tmp_path, store_uri):
    """At a terminal there are no epoch lines (the bar replaces them), so the bar carries the epoch's metrics."""
    import contextlib

    screen = Terminal()
    with contextlib.redirect_stdout(screen):
        run_job(tmp_path, store_uri, "trainer.max_epochs=2")
    bar = screen.getvalue()
    assert "epoch 1/2" not in bar  # the plain epoch lines are for logs and CI
    for metric in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert f"{metric}: " in bar


# The foundation hash: what changes the weights a `full` run trains changes it; what does not, does not.


def _hash(*overrides: str) -> str:
    return foundation_hash(compose_config("strategy=finetune", *overrides))


def test_the_foundation_hash_follows_the_glyph_generators_version_when_the_source_is_glyphs(monkeypatch):
    import trainwise.data.glyphs as glyphs

    before, digits_before = _hash(), _hash("source=digits")
    monkeypatch.setattr(glyphs, "GLYPHS_VERSION", glyphs.GLYPHS_VERSION + 1)
    assert _hash() != before
    assert _hash("source=digits") == digits_before  # the generator does not make the digits


def test_the_foundation_hash_follows_the_precision_it_trains_in():
    assert _hash("accelerator=cpu", "accelerator.precision=bf16-mixed") != _hash("accelerator=cpu")
    assert _hash("accelerator=cpu", "accelerator.precision=32-true") == _hash("accelerator=cpu")  # Lightning: same


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, precision=auto resolves to bf16-mixed")
def test_precision_auto_on_a_cpu_is_the_same_foundation_as_precision_32():
    assert _hash("accelerator=auto") == _hash("accelerator=cpu")


def test_the_foundation_hash_follows_the_number_of_ddp_ranks():
    two = _hash("accelerator=ddp_cpu", "accelerator.devices=2")
    assert two != _hash("accelerator=cpu")  # twice the global batch
    assert two != _hash("accelerator=ddp_cpu", "accelerator.devices=4")
    assert two != _hash("accelerator=ddp_cpu", "accelerator.devices=2", "accelerator.num_nodes=2")
    assert _hash("accelerator=ddp_cpu", "accelerator.devices=1") == _hash("accelerator=cpu")


@pytest.mark.parametrize(
    "override",
    [
        "dataset.train_fraction=0.05",
        "dataset.batch_size=16",
        "optimizer.lr=0.01",
        "seed=3",
        "tracking.uri=sqlite:///elsewhere.db",
        "strategy.freeze=backbone",
        "source.num_workers=2",
    ],
)
def test_the_foundation_hash_ignores_what_only_the_fine_tune_or_the_bookkeeping_uses(override):
    assert _hash(override) == _hash()


def test_foundation_seed_interpolated_from_seed_gives_each_seed_its_own_foundation_in_one_setting():
    """The report's hint for including the pretraining's randomness: foundation.seed='${seed}'."""
    from trainwise.config import config_hash, setting

    one, two = (compose_config("strategy=finetune", "foundation.seed=${seed}", f"seed={s}") for s in (1, 2))
    assert (one.foundation.seed, two.foundation.seed) == (1, 2)
    assert foundation_hash(one) != foundation_hash(two)  # two foundations...
    assert config_hash(setting(one)) == config_hash(setting(two))  # ...for the seeds of one report row
