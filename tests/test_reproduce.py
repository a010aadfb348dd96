"""Reproduce any run, resume interrupted ones (same MLflow run, same final metrics), refuse untrusted configs."""

from __future__ import annotations

import os
import signal

import pytest

from helpers import compose_config, mlflow_client, run_job
from trainwise.errors import Interrupted, UserError
from trainwise.reproduce import reproduce

DETERMINISTIC = ("deterministic=true", "trainer.max_epochs=3", "trainer.limit_train_batches=3")


def test_reproduce_is_exact_on_cpu_with_deterministic_mode(tmp_path, store_uri, monkeypatch):
    original = run_job(tmp_path / "a", store_uri, "strategy=scratch", *DETERMINISTIC)
    monkeypatch.chdir(tmp_path)
    assert reproduce(original.run_id, store_uri) == 0
    client = mlflow_client(store_uri)
    (again,) = client.search_runs(["1"], f"tags.`trainwise.reproduced_from` = '{original.run_id}'")
    assert again.info.run_id != original.run_id and again.info.status == "FINISHED"
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert again.data.metrics[key] == original.metrics[key]


def test_reproduce_reports_a_difference_with_a_nonzero_exit(tmp_path, store_uri, monkeypatch):
    original = run_job(tmp_path / "a", store_uri, "strategy=scratch", *DETERMINISTIC)
    client = mlflow_client(store_uri)
    client.log_metric(original.run_id, "test/acc", original.metrics["test/acc"] + 0.5, step=10**6)  # tamper
    monkeypatch.chdir(tmp_path)
    assert reproduce(original.run_id, store_uri) == 1


def test_reproducing_a_finetune_reuses_its_exact_foundation(tmp_path, store_uri, monkeypatch):
    tuned = run_job(tmp_path / "a", store_uri, "strategy=finetune")
    client = mlflow_client(store_uri)
    first_foundation = client.get_run(tuned.run_id).data.tags["trainwise.foundation_run"]
    newer = run_job(tmp_path / "b", store_uri, "strategy=full")  # same settings, newer: what auto would pick today
    assert newer.run_id != first_foundation
    monkeypatch.chdir(tmp_path)
    reproduce(tuned.run_id, store_uri, tolerance=1.0)
    (again,) = client.search_runs(["1"], f"tags.`trainwise.reproduced_from` = '{tuned.run_id}'")
    assert again.data.tags["trainwise.foundation_run"] == first_foundation


def test_reproduce_refuses_targets_outside_the_allowlist_unless_trusted(tmp_path, store_uri, monkeypatch):
    original = run_job(tmp_path / "a", store_uri, "strategy=scratch")
    client = mlflow_client(store_uri)
    config = tmp_path / "config.yaml"
    text = client.download_artifacts(original.run_id, "config/config.yaml", str(tmp_path))
    config.write_text(open(text).read().replace("torch.optim.Adam", "os.system"))
    client.log_artifact(original.run_id, str(config), "config")
    with pytest.raises(UserError, match="optimizer._target_=os.system"):
        reproduce(original.run_id, store_uri)
    with pytest.raises(UserError, match="does not exist"):
        reproduce("f" * 32, store_uri)


def _interrupt_after_first_epoch(monkeypatch):
    from trainwise.callbacks import GracefulStop

    def send_sigint(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(GracefulStop, "on_train_epoch_end", send_sigint, raising=False)


def test_interrupted_run_is_killed_and_resumes_into_the_same_run_with_the_same_result(tmp_path, store_uri, monkeypatch):
    client = mlflow_client(store_uri)
    straight = run_job(tmp_path / "straight", store_uri, "strategy=scratch", *DETERMINISTIC)

    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN in a background job
    with monkeypatch.context() as patch:
        _interrupt_after_first_epoch(patch)
        with pytest.raises(Interrupted) as stopped:
            run_job(tmp_path / "cut", store_uri, "strategy=scratch", *DETERMINISTIC)
    cut_id = stopped.value.run_id
    cut = client.get_run(cut_id)
    assert cut.info.status == "KILLED"
    assert "checkpoints/last.ckpt" in {a.path for a in client.list_artifacts(cut_id, "checkpoints")}
    assert "test/acc" not in cut.data.metrics
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored

    # Resume from the checkpoint downloaded from MLflow (the local job folder is gone).
    import shutil

    shutil.rmtree(tmp_path / "cut")
    from trainwise.jobs import JobContext, run

    resumed = run(compose_config("profile=smoke", f"tracking.uri={store_uri}", f"resume={cut_id}"),
                  JobContext(job_dir=tmp_path / "resumed"))  # fmt: skip
    assert resumed.run_id == cut_id
    final = client.get_run(cut_id)
    assert final.info.status == "FINISHED"
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert final.data.metrics[key] == straight.metrics[key], key
    assert len(client.get_metric_history(cut_id, "val/acc")) == 3  # epochs 1 + 2 in one run


def test_resume_refuses_a_finished_run(tmp_path, store_uri):
    done = run_job(tmp_path, store_uri, "strategy=scratch")
    with pytest.raises(UserError, match="already FINISHED"):
        run_job(tmp_path / "again", store_uri, f"resume={done.run_id}")
