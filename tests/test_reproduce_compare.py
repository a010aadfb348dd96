"""`reproduce` compares what it can and says so: a tolerance per kind of metric, and exit 1 when a run logged
nothing to compare (a KILLED or FAILED run), never "Metrics match."."""

from __future__ import annotations

import os
import signal

import pytest

from helpers import run_job
from trainwise.errors import Interrupted
from trainwise.reproduce import _compare, reproduce


def test_a_run_that_logged_no_outcome_has_nothing_to_compare(tmp_path, store_uri, monkeypatch, capsys):
    from trainwise.callbacks import GracefulStop

    def send_sigint(self, trainer, pl_module):  # Ctrl+C after the first epoch: the run ends KILLED
        os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(GracefulStop, "on_train_epoch_end", send_sigint, raising=False)
        with pytest.raises(Interrupted) as stopped:
            run_job(tmp_path / "cut", store_uri, "strategy=scratch", "trainer.max_epochs=2")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert reproduce(stopped.value.run_id, store_uri) == 1
    out = capsys.readouterr()
    assert "Metrics match." not in out.out
    assert f"Nothing to compare: run {stopped.value.run_id} ended KILLED" in out.err
    assert f"resume={stopped.value.run_id}" in out.err


BEFORE = {"test/acc": 0.5, "test/loss": 2.0, "val/acc_best": 0.5, "model/params_total": 100.0}


@pytest.mark.parametrize(
    "changed,expected",
    [
        ({"test/loss": 2.015}, 0),  # 0.75 % of the loss: within 1 %, though 0.015 is more than 0.01
        ({"test/loss": 2.03}, 1),  # 1.5 %
        ({"test/acc": 0.509}, 0),  # under one point
        ({"test/acc": 0.52}, 1),  # two points
        ({"model/params_total": 101.0}, 1),  # another architecture, whatever the tolerance
    ],
)
def test_each_metric_has_its_own_kind_of_tolerance(changed, expected):
    assert _compare(BEFORE, {**BEFORE, **changed}, 0.01, "a" * 32, "b" * 32) == expected


def test_a_small_loss_is_compared_relative_to_itself():
    before = {**BEFORE, "test/loss": 0.02}
    assert _compare(before, {**before, "test/loss": 0.025}, 0.01, "a" * 32, "b" * 32) == 1  # 25 %, not 0.005


def test_runs_sharing_no_outcome_do_not_match(capsys):
    counts = {"model/params_total": 100.0}  # logged by both, but proves nothing about training
    assert _compare(counts, dict(counts), 0.01, "a" * 32, "b" * 32) == 1
    assert "Nothing to compare" in capsys.readouterr().out
