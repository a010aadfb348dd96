"""Sweeps and multi-node DDP on a real two-node SLURM cluster started on this machine (tests/slurm_cluster.py;
slow, skipped without slurm-wlm and munge), and Lightning's srun hint outside an allocation (fast)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import cli_env, mlflow_client
from slurm_cluster import Cluster, missing

SIZED = ("hydra/launcher=slurm", "hydra.launcher.partition=debug", "accelerator=cpu", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1")  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = missing()
    if why:
        pytest.skip(why)
    started = Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield started
    started.stop()


def _train(cwd: Path, cluster: Cluster, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "trainwise", "train", "-m", *args, "profile=smoke",
               f"tracking.uri=sqlite:///{cwd / 'mlflow.db'}"]  # fmt: skip
    env = cli_env() | cluster.env
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _runs(cwd: Path):
    client = mlflow_client(f"sqlite:///{cwd / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(ids, order_by=["attributes.start_time ASC"])


@pytest.mark.slow
def test_a_sweep_runs_its_jobs_on_the_cluster_and_reports(tmp_path, cluster):
    result = _train(tmp_path, cluster, *SIZED, "strategy=scratch,finetune")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Bypassing sacct" not in result.stdout + result.stderr  # no accounting database: squeue, quietly
    assert "SLURM jobs" in result.stdout and "RUNNING" in result.stdout
    client, runs = _runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("trainwise.role") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("trainwise.role") == "job"]
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.tags["trainwise.strategy"] for r in jobs) == ["finetune", "full", "scratch"]
    assert all(r.info.status == "FINISHED" for r in jobs)
    assert {r.data.tags["trainwise.host"] for r in jobs}  # ran as SLURM jobs, recorded
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


@pytest.mark.slow
def test_one_ddp_run_across_two_nodes_counts_both_nodes_samples(tmp_path, cluster):
    two_nodes = ("accelerator=ddp_cpu", "accelerator.num_nodes=2", "accelerator.devices=1")
    result = _train(tmp_path, cluster, *SIZED, *two_nodes, "strategy=scratch")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _client, runs = _runs(tmp_path)
    (job,) = [r for r in runs if r.data.tags.get("trainwise.role") == "job"]  # one run for the two ranks
    assert job.info.status == "FINISHED"
    train_size = int(job.data.params["data.train_size"])
    # Each rank takes every second image of an epoch (one epoch, fewer batches than limit_train_batches).
    assert job.data.metrics["cost/train_samples"] == 2 * (train_size // 2)


@pytest.mark.slow
def test_a_job_sized_beyond_the_partition_stops_the_sweep_with_one_line(tmp_path, cluster):
    result = _train(tmp_path, cluster, "hydra/launcher=slurm", "hydra.launcher.partition=debug", "accelerator=cpu",
                    "strategy=scratch", timeout=120)  # the preset's 8 CPUs and 32 GB per task  # fmt: skip
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "can never start (PartitionConfig" in last and "cpus_per_task=8" in last, last
    assert "partition debug: 2 CPUs" in last and "Traceback" not in result.stderr
    _client, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]  # the parent alone, not RUNNING
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=os.environ | cluster.env)
    assert queue.stdout.strip() == ""  # its job is cancelled


@pytest.mark.slow
def test_a_cancelled_job_ends_its_run_and_the_parent(tmp_path, cluster):
    env = cli_env() | cluster.env
    command = [sys.executable, "-m", "trainwise", "train", "-m", *SIZED, "strategy=scratch", "profile=smoke",
               "trainer.max_epochs=1000", "trainer.limit_train_batches=20",
               f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]  # fmt: skip
    sweep = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until its job runs (the store is the sweep's to create: not read here)
            queue = subprocess.run(
                ["squeue", "-h", "-o", "%T"], capture_output=True, text=True, env=os.environ | cluster.env
            )
            if "RUNNING" in queue.stdout:
                break
            time.sleep(1)
        time.sleep(8)  # its run is training
        subprocess.run(["scancel", "-u", "root"], env=os.environ | cluster.env, check=True)
        out, err = sweep.communicate(timeout=120)
    finally:
        sweep.kill()
    assert sweep.returncode == 1, out[-3000:] + err[-3000:]
    assert "error: SLURM job" in err
    _client, runs = _runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("trainwise.role") == "sweep"]
    (job,) = [r for r in runs if r.data.tags.get("trainwise.role") == "job"]
    assert job.info.status in ("KILLED", "FAILED") and parent.info.status == "FAILED"


@pytest.mark.slow  # ~25 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_a_run_outside_an_allocation_does_not_print_lightnings_srun_hint(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    env = {k: v for k, v in cli_env().items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{fake}:{env['PATH']}"
    command = [
        sys.executable,
        "-m",
        "trainwise",
        "train",
        "profile=smoke",
        f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "srun" not in result.stdout + result.stderr
