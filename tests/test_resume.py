"""Interrupt a run at any moment and resume it: the result is the uninterrupted run's, each epoch is logged once,
costs cover the whole run, and no signal at any moment leaves a run RUNNING.

The signals are real (os.kill). Cases where today's handling would kill or hang the test process run the job in
a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import compose_config, mlflow_client, run_job
from trainwise.errors import Interrupted, UserError

# Deterministic, 5 epochs of 4 batches; the last epoch trains at a learning rate that wrecks the network (see
# _last_epoch_diverges), so the best validation epoch is an earlier one on any CPU, whatever its arithmetic.
RUN = ("strategy=scratch", "deterministic=true", "trainer.max_epochs=5", "trainer.limit_train_batches=4",
       "optimizer.lr=0.01")  # fmt: skip
STEPS_PER_EPOCH = 4


def _last_epoch_diverges(monkeypatch) -> None:
    """Adam at learning rate 1 in the 5th epoch, in the straight and the interrupted runs alike. Without it,
    whether 0.01 peaks before the last epoch depended on the machine (it did on one CPU, not on another)."""
    from trainwise.module import ClassificationModule

    original = ClassificationModule.on_train_epoch_start

    def on_train_epoch_start(self):
        original(self)
        if self.current_epoch == 4:
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] = 1.0

    monkeypatch.setattr(ClassificationModule, "on_train_epoch_start", on_train_epoch_start)


def _sigterm_at_step(monkeypatch, step: int) -> None:
    """SIGTERM to this process inside training step `step` (0-based), i.e. mid-epoch when step % 4 is 1 or 2."""
    from trainwise.module import ClassificationModule

    original = ClassificationModule.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == step and self.trainer.state.fn == "fit":
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ClassificationModule, "training_step", training_step)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every interrupted one must end equal to."""
    tmp = tmp_path_factory.mktemp("straight")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        _last_epoch_diverges(patch)
        result = run_job(tmp, uri, *RUN)
    client = mlflow_client(uri)
    val_acc = _history(client, result.run_id, "val/acc")
    assert len(val_acc) == 5
    best_epoch = max(range(5), key=lambda e: val_acc[e][1])
    assert best_epoch < 4, f"the test needs a best epoch before the last one: {val_acc}"
    return result, val_acc


@pytest.mark.parametrize("every_s", [0, 3600], ids=["last.ckpt-every-epoch", "last.ckpt-throttled"])
def test_sigterm_mid_epoch_after_the_best_epoch_resumes_to_the_uninterrupted_result(
    tmp_path, store_uri, monkeypatch, straight, every_s
):
    """every_s=0: last.ckpt holds epoch 4 (the best), the stop comes in epoch 5. every_s=3600: last.ckpt is
    written at the first epoch only, so epochs 2-4, already logged and better than epoch 1, are trained again."""
    expected, expected_val_acc = straight
    client = mlflow_client(store_uri)
    _last_epoch_diverges(monkeypatch)  # for the resumed process too
    with monkeypatch.context() as patch:
        _sigterm_at_step(patch, 4 * STEPS_PER_EPOCH + 1)  # epoch 5, second batch: after the best epoch
        with pytest.raises(Interrupted) as stopped:
            run_job(tmp_path / "cut", store_uri, *RUN, f"last_checkpoint_every_s={every_s}")
    run_id = stopped.value.run_id
    assert client.get_run(run_id).info.status == "KILLED"
    logged_before_resume = len(client.get_metric_history(run_id, "val/acc"))
    assert logged_before_resume == (4 if every_s == 0 else 1)  # only epochs last.ckpt holds
    fit_before = max(v for _step, v in _history(client, run_id, "cost/fit_seconds"))

    import shutil

    shutil.rmtree(tmp_path / "cut")  # resume from what MLflow holds, as on another machine
    from trainwise.jobs import JobContext, run

    resumed = run(compose_config("profile=smoke", f"tracking.uri={store_uri}", f"resume={run_id}"),
                  JobContext(job_dir=tmp_path / "resumed"))  # fmt: skip
    final = client.get_run(run_id)
    assert final.info.status == "FINISHED" and resumed.run_id == run_id
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert final.data.metrics[key] == expected.metrics[key], key
    assert _history(client, run_id, "val/acc") == expected_val_acc  # every epoch once, same values, same steps
    assert len(client.get_metric_history(run_id, "train/loss")) == 5
    assert final.data.metrics["cost/train_samples"] == expected.metrics["cost/train_samples"]
    # The resumed process trained 1 (or 4) of the 5 epochs; the cost covers the whole run: it goes on from the
    # interrupted process's total, never back to 0. (Not against the straight run's time: that one can hold the
    # session's first-fit warm-up, 10x a smoke epoch.)
    fit = [v for _step, v in _history(client, run_id, "cost/fit_seconds")]
    assert all(a <= b for a, b in zip(fit, fit[1:], strict=False)) and fit[-1] > fit_before > 0
    assert final.data.metrics["cost/fit_seconds"] == fit[-1]


def _child(tmp_path: Path, store_uri: str, body: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `body` (after the setup below) in a child Python process, so a signal handled badly cannot take the
    test process down with it."""
    script = textwrap.dedent(f"""
        import os, signal, sys, threading, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import run_job
        from pathlib import Path
        tmp, uri = Path({str(tmp_path)!r}), {store_uri!r}
    """) + textwrap.dedent(body)
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)


def _only_run(store_uri: str):
    client = mlflow_client(store_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run


@pytest.mark.slow  # ~18 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_sigterm_while_the_data_loads_ends_the_run_killed(tmp_path, store_uri):
    result = _child(
        tmp_path,
        store_uri,
        """
        import trainwise.data
        build = trainwise.data.build_datamodule
        def slow_build(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)  # as SLURM preemption or `docker stop` would
            time.sleep(5)
            return build(*args, **kwargs)
        trainwise.data.build_datamodule = slow_build
        from trainwise.errors import Interrupted
        try:
            run_job(tmp, uri)
        except Interrupted as stopped:
            print("interrupted", stopped.run_id)
    """,
    )
    assert "interrupted" in result.stdout, result.stderr[-3000:]
    assert _only_run(store_uri).info.status == "KILLED"


@pytest.mark.slow  # ~19 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_a_second_sigterm_stops_a_hung_job_at_once(tmp_path, store_uri):
    result = _child(
        tmp_path,
        store_uri,
        """
        from trainwise.module import ClassificationModule
        step = ClassificationModule.training_step
        def hang(self, batch, batch_idx):
            if self.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # asks to stop after this batch...
                threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
                while True:  # ...which never ends
                    time.sleep(0.1)
            return step(self, batch, batch_idx)
        ClassificationModule.training_step = hang
        from trainwise.errors import Interrupted
        try:
            run_job(tmp, uri)
        except Interrupted as stopped:
            print("interrupted", stopped.run_id)
    """,
        timeout=90,
    )
    assert "interrupted" in result.stdout, result.stderr[-3000:]
    assert _only_run(store_uri).info.status == "KILLED"


@pytest.mark.slow  # ~24 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_ctrl_c_while_the_run_is_being_ended_still_ends_it_killed_with_the_resume_hint(tmp_path):
    """A second Ctrl+C while MLflow's queue is flushed (slow against a remote server) used to leave the run
    RUNNING. Through the CLI, as a user at a shell would."""
    store_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _child(
        tmp_path,
        store_uri,
        """
        import trainwise.tracking.run as tracking_run
        flush = tracking_run._flush_async_logging
        def slow_flush(client):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            flush(client)
        tracking_run._flush_async_logging = slow_flush
        from trainwise.cli import main
        main(["train", "profile=smoke", f"tracking.uri={uri}", f"hydra.run.dir={tmp / 'job'}"])
    """,
    )
    run = _only_run(store_uri)
    assert run.info.status == "KILLED", result.stderr[-3000:]
    assert f"trainwise train resume={run.info.run_id}" in result.stdout
    assert result.returncode == 128 + signal.SIGINT


def test_resume_refuses_a_run_still_running_unless_its_process_is_gone_or_forced(tmp_path, store_uri):
    with pytest.raises(Interrupted) as stopped:
        with pytest.MonkeyPatch.context() as patch:
            _sigterm_at_step(patch, 5)  # the second epoch: the first one is in last.ckpt
            run_job(tmp_path / "cut", store_uri, "strategy=scratch", "trainer.max_epochs=2")
    run_id = stopped.value.run_id
    client = mlflow_client(store_uri)
    client.update_run(run_id, status="RUNNING")  # as if its process were still training (it is this one)
    assert client.get_run(run_id).data.tags["trainwise.pid"] == str(os.getpid())
    with pytest.raises(UserError, match="still RUNNING .*force_resume=true"):
        run_job(tmp_path / "again", store_uri, f"resume={run_id}")

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client.set_tag(run_id, "trainwise.pid", str(gone.pid))  # a process that died without ending the run
    assert run_job(tmp_path / "stale", store_uri, f"resume={run_id}").run_id == run_id
    assert client.get_run(run_id).info.status == "FINISHED"


def test_resume_with_force_continues_a_run_whose_process_cannot_be_checked(tmp_path, store_uri):
    with pytest.raises(Interrupted) as stopped:
        with pytest.MonkeyPatch.context() as patch:
            _sigterm_at_step(patch, 5)  # the second epoch: the first one is in last.ckpt
            run_job(tmp_path / "cut", store_uri, "strategy=scratch", "trainer.max_epochs=2")
    run_id = stopped.value.run_id
    client = mlflow_client(store_uri)
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "trainwise.host", "another-machine")
    with pytest.raises(UserError, match="another-machine"):
        run_job(tmp_path / "again", store_uri, f"resume={run_id}")
    run_job(tmp_path / "forced", store_uri, f"resume={run_id}", "force_resume=true")
    assert client.get_run(run_id).info.status == "FINISHED"
