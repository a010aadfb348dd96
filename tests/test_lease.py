"""The foundation lock across machines: jobs that share only a tracking server (SLURM nodes) train a foundation
once, and a lock whose holder died does not block the others for ever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from helpers import cli_env, mlflow_client


def _machine(tmp_path, name: str) -> tuple[dict, str]:
    """Environment and working folder of a job on its own machine: its own cache (where file locks live)."""
    home = tmp_path / name
    (home / "work").mkdir(parents=True)
    env = cli_env()
    return env | {"TRAINWISE_CACHE": str(home / "cache"), "HOME": str(home)}, str(home / "work")


@pytest.mark.slow  # ~45 s with the server; make test keeps the lease's own tests (TTL, UI) on SQLite
def test_two_machines_sharing_a_server_train_one_foundation(tmp_path, mlflow_server):
    """Two fine-tunes started at once on two machines need the same missing foundation: one trains it, the other
    waits for it in the store and fine-tunes from it (each trained its own with a lock under ~/.cache)."""
    command = [sys.executable, "-m", "trainwise", "train", "strategy=finetune", "profile=smoke",
               f"tracking.uri={mlflow_server.uri}"]  # fmt: skip
    jobs = []
    for name in ("node1", "node2"):
        env, cwd = _machine(tmp_path, name)
        jobs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True))  # fmt: skip
    outputs = [job.communicate(timeout=400)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], "\n".join(o[-2000:] for o in outputs)

    client = mlflow_client(mlflow_server.uri)
    active = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in active])
    fulls = [r for r in runs if r.data.tags.get("trainwise.strategy") == "full"]
    finetunes = [r for r in runs if r.data.tags.get("trainwise.strategy") == "finetune"]
    assert len(fulls) == 1, [r.info.run_id for r in fulls]
    assert [r.info.status for r in finetunes] == ["FINISHED", "FINISHED"]
    assert {r.data.tags["trainwise.foundation_run"] for r in finetunes} == {fulls[0].info.run_id}
    assert any("Waiting for" in output for output in outputs)
    assert not [e.name for e in active if e.name.startswith("trainwise-lease-")]  # released, not left behind


@pytest.mark.slow  # ~45 s with the server: the two-machine test above covers the lease in `make test`
def test_a_full_job_that_waited_for_a_fine_tune_training_its_foundation_reuses_that_run(tmp_path, mlflow_server):
    """node2 asks for `full` while node1's fine-tune holds the lease and trains that very foundation on the side:
    node2 waits, then stands on node1's foundation run instead of training the same thing a second time."""
    # Enough foundation epochs that node1 still trains it when node2 has started (Python and torch take seconds).
    base = [sys.executable, "-m", "trainwise", "train", "profile=smoke", "foundation.max_epochs=60",
            f"tracking.uri={mlflow_server.uri}"]  # fmt: skip
    env, cwd = _machine(tmp_path, "node1")
    finetune = subprocess.Popen(base + ["strategy=finetune"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seen = []
    for line in finetune.stdout:  # node1 holds the lease once it says so
        seen.append(line)
        if "training it first" in line:
            break
    assert "training it first" in seen[-1], "".join(seen[-40:])
    env, cwd = _machine(tmp_path, "node2")
    full = subprocess.run(base + ["strategy=full"], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    rest = finetune.communicate(timeout=400)[0]
    assert (finetune.returncode, full.returncode) == (0, 0), full.stdout[-2000:] + full.stderr[-2000:] + rest[-2000:]

    client = mlflow_client(mlflow_server.uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    fulls = [r for r in runs if r.data.tags.get("trainwise.strategy") == "full"]
    (foundation,) = fulls
    assert "Waiting for" in full.stdout
    assert f"full: skipped, run {foundation.info.run_id} of a parallel job trained foundation" in full.stdout


def test_a_lease_whose_holder_was_killed_is_broken_after_its_ttl(store_uri):
    """The lease needs only MLflow's client API, so a SQLite store (quicker to start than a server) tests it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"""
import time
from mlflow import MlflowClient
from trainwise.tracking.lease import StoreLease
StoreLease(MlflowClient({store_uri!r}), "foundation-x", heartbeat_s=0.3).acquire()
print("held", flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    from mlflow import MlflowClient

    from trainwise.tracking.lease import StoreLease

    client = MlflowClient(store_uri)
    waiter = StoreLease(client, "foundation-x", ttl_s=1.5, heartbeat_s=0.3, poll_s=0.1)
    got = threading.Event()
    threading.Thread(target=lambda: (waiter.acquire(), got.set()), daemon=True).start()
    # While the holder lives, its heartbeat keeps the lease: the waiter is still waiting at twice the TTL.
    assert not got.wait(3)
    os.kill(holder.pid, signal.SIGKILL)  # no release, no cleanup: as a node that is lost
    holder.wait()
    killed = time.monotonic()
    assert got.wait(20)
    assert 1.0 <= time.monotonic() - killed < 10  # about ttl_s after the last heartbeat
    waiter.release()
    assert not [e.name for e in client.search_experiments() if e.name.startswith("trainwise-lease-")]


def test_the_ui_link_opens_the_runs_not_a_lease_held_meanwhile(store_uri):
    from mlflow import MlflowClient

    from trainwise.cli import _default_experiment_id
    from trainwise.tracking.lease import StoreLease

    client = MlflowClient(store_uri)
    runs = client.create_experiment("trainwise")
    lease = StoreLease(client, "foundation-x")
    lease.acquire()  # created after the runs' experiment: the newest one while it is held
    try:
        assert _default_experiment_id(store_uri) == runs
    finally:
        lease.release()
