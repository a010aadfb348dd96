"""A real `mlflow server` on 127.0.0.1 (SQLite backend, served artifacts): a parallel sweep, its checkpoints
and report read back over HTTP, and reproduce from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env, mlflow_client


@pytest.mark.slow  # ~55 s; test_lease's two-machine test runs trainwise against a real server in `make test`
def test_a_parallel_sweep_against_a_server_then_reproduce(tmp_path, mlflow_server):
    mlflow_server = mlflow_server.uri
    work = tmp_path / "work"
    work.mkdir()
    env = cli_env()
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "strategy=scratch,full", "profile=smoke",
            "tracking=server", f"tracking.uri={mlflow_server}"]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "trainwise", "train", *args],
                            cwd=work, env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (work / "mlflow.db").exists()  # everything went to the server

    client = mlflow_client(mlflow_server)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    jobs = [r for r in runs if r.data.tags.get("trainwise.role") == "job"]
    (parent,) = [r for r in runs if r.data.tags.get("trainwise.role") == "sweep"]
    assert sorted(r.data.tags["trainwise.strategy"] for r in jobs) == ["full", "scratch"]
    assert all(r.info.status == "FINISHED" for r in [*jobs, parent])
    scratch = next(r for r in jobs if r.data.tags["trainwise.strategy"] == "scratch")
    best = Path(client.download_artifacts(scratch.info.run_id, "checkpoints/best.ckpt", str(tmp_path)))
    assert best.stat().st_size > 1000  # downloaded over HTTP from the server's artifact store
    report = client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path))
    assert "| scratch" in Path(report).read_text()

    # The default tolerance (not deterministic mode: one accuracy point, 1 % of the loss): the config, the data
    # and the seed come back over HTTP whole, so the run must come out the same within float noise.
    again = subprocess.run(
        [sys.executable, "-m", "trainwise", "reproduce", scratch.info.run_id, "--tracking-uri", mlflow_server],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Metrics match." in again.stdout and "(tolerance 0.01)" in again.stdout
    reproduced = client.search_runs(
        [scratch.info.experiment_id], f"tags.`trainwise.reproduced_from` = '{scratch.info.run_id}'"
    )
    assert len(reproduced) == 1 and reproduced[0].info.status == "FINISHED"
