"""The team recipe (docs/scale-out.md, "A tracking server for a team") on a real PostgreSQL: a throwaway cluster
(initdb + pg_ctl, temporary folder, free port), a real `mlflow server` on it with served artifacts, and a parallel
sweep through the server. Skipped, saying what is missing, where PostgreSQL or the psycopg2 driver is not installed."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import Server, cli_env, mlflow_client

PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: PATH first, then Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = [shutil.which(p) for p in PG_PROGRAMS]
    if all(on_path):
        return Path(os.path.realpath(on_path[0])).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2].split(".")[0]))
    for folder in reversed(versions):
        if all(os.access(Path(folder, p), os.X_OK) for p in PG_PROGRAMS):
            return Path(folder)
    return None


def _as_user_prefix() -> tuple[list[str], str | None]:
    """initdb and postgres refuse to run as root: as root, run them as `postgres` (or `nobody`) via runuser."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and `runuser` is missing: initdb refuses to run as root")
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return [runuser, "-u", name, "--"], name
    pytest.skip("running as root and no unprivileged user (postgres, nobody) to run initdb as")


@pytest.fixture
def postgres_uri():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (free port, trust auth, fsync off): yields a SQLAlchemy URI to
    an empty database `mlflow`; stops the cluster and removes its folder afterwards."""
    try:
        import psycopg2
    except ImportError:
        pytest.skip("Python driver psycopg2 is not installed (pip install psycopg2-binary, in the dev extra)")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
                    "/usr/lib/postgresql/*/bin (e.g. apt-get install postgresql)")  # fmt: skip
    prefix, user = _as_user_prefix()
    # Not pytest's tmp_path: as root that is 0700 and the postgres user could not enter it.
    folder = Path(tempfile.mkdtemp(prefix="trainwise-pg-"))
    if user is not None:
        os.chown(folder, pwd.getpwnam(user).pw_uid, -1)
    data, port = folder / "data", _free_port()

    def pg(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *args], cwd=folder, capture_output=True, text=True, timeout=timeout)

    init = pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8",
              "--no-locale", "--no-sync")  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr[-2000:]}")
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
    start = pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-w", "-t", "60",
               "-o", options, "start")  # fmt: skip
    try:
        assert start.returncode == 0, start.stderr + (folder / "postgres.log").read_text()[-2000:]
        admin = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        admin.close()
        # The driver named: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, not psycopg2.
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_server(tmp_path, postgres_uri):
    """`mlflow server` on 127.0.0.1 (free port) backed by the PostgreSQL cluster, serving its artifacts."""
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", postgres_uri,
               "--artifacts-destination", str(tmp_path / "server-artifacts"), "--serve-artifacts",
               "--workers", "2"]  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", None, command)
    server.start()  # the first start creates MLflow's schema in PostgreSQL
    yield server
    server.stop()


@pytest.mark.slow
def test_a_parallel_sweep_through_a_server_on_postgresql(tmp_path, postgres_uri, postgres_server):
    import psycopg2

    work = tmp_path / "work"
    work.mkdir()
    env = cli_env()
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "profile=smoke",
            "trainer.max_epochs=2", "tracking=server", f"tracking.uri={postgres_server.uri}"]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "trainwise", "train", *args],
                            cwd=work, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (work / "mlflow.db").exists()  # everything went to the server

    client = mlflow_client(postgres_server.uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    jobs = [r for r in runs if r.data.tags.get("trainwise.role") == "job"]
    (parent,) = [r for r in runs if r.data.tags.get("trainwise.role") == "sweep"]
    assert sorted(r.data.params["seed"] for r in jobs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in [*jobs, parent])
    for job in jobs:
        assert job.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"test/acc", "test/loss", "cost/fit_seconds", "model/params_total"} <= set(job.data.metrics)
        assert len(client.get_metric_history(job.info.run_id, "val/acc")) == 2  # one point per epoch
        folder = tmp_path / job.info.run_id
        best = Path(client.download_artifacts(job.info.run_id, "checkpoints/best.ckpt", str(folder)))
        assert best.stat().st_size > 1000  # downloaded over HTTP from the server's artifact store

    # The runs, their metrics and their status are rows in PostgreSQL itself, not in some other store.
    db = psycopg2.connect(postgres_uri.replace("+psycopg2", ""))
    try:
        with db.cursor() as cursor:
            cursor.execute("SELECT run_uuid, status FROM runs")
            assert dict(cursor.fetchall()) == {r.info.run_id: "FINISHED" for r in runs}
            cursor.execute("SELECT count(*) FROM metrics WHERE key = 'val/acc'")
            assert cursor.fetchone()[0] == 4  # 2 jobs x 2 epochs
    finally:
        db.close()
