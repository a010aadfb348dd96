"""The product's claim on the built-in data: pretraining on glyphs pays most when labelled digits are few.
Slow (a real foundation and 12 runs): `make test-all`."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest

from helpers import cli_env, mlflow_client


@pytest.mark.slow
def test_finetune_beats_scratch_clearly_at_small_data_and_the_gap_narrows(tmp_path):
    args = [
        "-m",
        "strategy=scratch,finetune",
        "dataset.train_fraction=0.01,1.0",
        "seed=0,1,2",
        "optimizer.lr=0.003",
        "dataset.batch_size=32",
        "trainer.max_epochs=10",
    ]  # fmt: skip (data_efficiency's)
    env = cli_env()
    result = subprocess.run([sys.executable, "-m", "trainwise", "train", *args],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(["1"], "tags.`trainwise.role` = 'job' AND tags.`trainwise.dataset` = 'digits'")
    acc: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        key = (run.data.tags["trainwise.strategy"], run.data.params["dataset.train_fraction"])
        acc.setdefault(key, []).append(run.data.metrics["test/acc"])
    gap_small = statistics.fmean(acc["finetune", "0.01"]) - statistics.fmean(acc["scratch", "0.01"])
    gap_full = statistics.fmean(acc["finetune", "1.0"]) - statistics.fmean(acc["scratch", "1.0"])
    assert gap_small >= 0.05, acc
    assert gap_full < gap_small, acc
