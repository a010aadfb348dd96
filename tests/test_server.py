"""A real `mlflow server` on 127.0.0.1 (SQLite backend, served artifacts): a parallel sweep, its checkpoints
and report read back over HTTP, and reproduce from it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import mlflow_client


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", str(tmp_path / "server-artifacts"), "--serve-artifacts",
               "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not start")
    yield uri
    server.terminate()
    server.wait(timeout=30)


def test_a_parallel_sweep_against_a_server_then_reproduce(tmp_path, mlflow_server):
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
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

    again = subprocess.run(
        [sys.executable, "-m", "trainwise", "reproduce", scratch.info.run_id, "--tracking-uri", mlflow_server,
         "--tolerance", "1"], cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    reproduced = client.search_runs(
        [scratch.info.experiment_id], f"tags.`trainwise.reproduced_from` = '{scratch.info.run_id}'"
    )
    assert len(reproduced) == 1 and reproduced[0].info.status == "FINISHED"
