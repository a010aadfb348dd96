"""optimizer.lr=auto: Lightning's learning-rate finder on the training split, its suggestion used and logged."""

from __future__ import annotations

import pytest

from helpers import compose_config, mlflow_client, run_job
from trainwise.errors import UserError


def test_lr_auto_trains_with_the_finders_suggestion_and_logs_it_with_its_plot(tmp_path, store_uri):
    result = run_job(tmp_path, store_uri, "optimizer.lr=auto", "strategy=scratch")
    client = mlflow_client(store_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    found = float(run.data.params["optimizer.lr_found"])
    assert 1e-8 < found < 1.0  # lr_find's default range
    assert run.data.params["optimizer.lr"] == "auto"  # the config as asked; the rate it used beside it
    assert "lr_find/lr_find.png" in {a.path for a in client.list_artifacts(result.run_id, "lr_find")}
    assert f"learning rate {found:g}" in run.data.tags["mlflow.note.content"]


def test_lr_auto_under_ddp_is_one_clear_line_before_any_run():
    from trainwise.config import validate

    cfg = compose_config("optimizer.lr=auto", "accelerator=ddp_cpu", "accelerator.devices=2")
    with pytest.raises(UserError, match="optimizer.lr=auto runs the learning-rate finder in one process"):
        validate(cfg)
