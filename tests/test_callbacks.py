"""The `callbacks` config group: Lightning's own callbacks, chosen on the command line."""

from __future__ import annotations

import pytest

from helpers import mlflow_client, run_job
from trainwise.errors import UserError


def test_early_stopping_that_no_epoch_can_satisfy_stops_after_its_patience_with_the_lr_monitor_beside_it(
    tmp_path, store_uri
):
    # min_delta 1.0: no accuracy can improve by a whole 100 %, so every epoch after the first counts as no better.
    result = run_job(tmp_path, store_uri, "callbacks=[early_stopping,lr_monitor]",
                     "callbacks.early_stopping.patience=2", "callbacks.early_stopping.min_delta=1.0",
                     "trainer.max_epochs=10")  # fmt: skip
    client = mlflow_client(store_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["cost/epochs"] == 3  # the first epoch, then two without improvement
    assert len(client.get_metric_history(result.run_id, "val/acc")) == 3
    assert run.data.params["callbacks.early_stopping.patience"] == "2"  # in the logged config: reproducible
    assert any(key.startswith("lr-") for key in run.data.metrics), sorted(run.data.metrics)  # the lr monitor's


def test_early_stopping_without_a_validation_split_is_one_clear_line(tmp_path, store_uri):
    with pytest.raises(UserError, match="callbacks=early_stopping watches val/acc.*no validation split"):
        run_job(tmp_path, store_uri, "callbacks=early_stopping", "dataset.train_fraction=0.01",
                "dataset.val_from_labelled=true")  # fmt: skip


def test_the_trainer_profiles_nothing_cheaply_unless_a_profiler_is_asked_for(tmp_path):
    """trainwise replaces Lightning's do-nothing profiler (a generator context manager around every callback hook)
    with a cheaper do-nothing one; a profiler the user asks for is Lightning's."""
    from pytorch_lightning.profilers import SimpleProfiler

    from helpers import compose_config
    from trainwise.callbacks import NoProfiler
    from trainwise.trainer import build_trainer

    default, *_ = build_trainer(compose_config("accelerator=cpu"), False, tmp_path / "a")
    asked, *_ = build_trainer(compose_config("accelerator=cpu", "+trainer.profiler=simple"), False, tmp_path / "b")
    assert isinstance(default.profiler, NoProfiler)
    with default.profiler.profile("a hook"), default.profiler.profile("a hook"):  # reusable, nestable
        pass
    assert isinstance(asked.profiler, SimpleProfiler)
