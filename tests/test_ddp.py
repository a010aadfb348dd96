"""DDP with 2 CPU processes (accelerator=ddp_cpu, gloo): one MLflow run per job, whatever the number of ranks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import mlflow_client

SMALL = ["min_train_steps=0", "trainer.max_epochs=2", "dataset.train_fraction=0.3", "source.num_per_class=12"]


def train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "trainwise", "train", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    done = subprocess.run([*command, *SMALL, *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def runs(tmp_path: Path):
    client = mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("trainwise")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.slow  # ~40 s (a DDP foundation, then the DDP fine-tune): kept out of `make test` for its 10 minutes
def test_ddp_cpu_finetune_with_frozen_backbone_is_one_run_with_each_sample_once_per_epoch(tmp_path):
    # The foundation's hash counts the ranks (they set the global batch): a DDP fine-tune uses a DDP foundation.
    train(tmp_path, "strategy=full", "accelerator=ddp_cpu")
    # The backbone is frozen and run every step (no feature cache), so DDP sees parameters without gradients.
    frozen = ["strategy=finetune", "strategy.freeze=backbone", "strategy.cache_features=false"]
    train(tmp_path, "accelerator=ddp_cpu", *frozen)

    client, (full, finetune) = runs(tmp_path)  # exactly one run for the 2-process job
    assert finetune.info.status == "FINISHED"
    assert finetune.data.tags["trainwise.foundation_run"] == full.info.run_id
    assert finetune.data.params["accelerator.devices"] == "2"
    # Each rank took half of every epoch: together, each training image once per epoch, as one process would
    # (an odd one out is left out of an epoch, so that both ranks take the same number of steps).
    train_size = int(finetune.data.params["data.train_size"])
    assert finetune.data.metrics["cost/train_samples"] == 2 * (train_size - train_size % 2)
    assert int(finetune.data.params["data.steps_per_epoch"]) == -(-(train_size // 2) // 64)
    # Only rank 0 logged: one point per epoch, not one per rank.
    assert len(client.get_metric_history(finetune.info.run_id, "val/acc")) == 2
    saved = sorted(a.path for a in client.list_artifacts(finetune.info.run_id, "checkpoints"))
    assert saved == ["checkpoints/best.ckpt", "checkpoints/last.ckpt"]
    # The other rank wrote its output beside the job, not into the run.
    job_dir = Path(finetune.data.tags["trainwise.job_dir"])
    assert (job_dir / "ddp" / "rank1.log").is_file()


@pytest.mark.slow
def test_ddp_cpu_scratch_sees_as_many_samples_per_epoch_as_one_process(tmp_path):
    longer = "trainer.max_epochs=8"
    train(tmp_path, "strategy=scratch", longer)
    train(tmp_path, "strategy=scratch", longer, "accelerator=ddp_cpu")
    _, (single, ddp) = runs(tmp_path)
    assert ddp.info.status == "FINISHED"
    assert single.data.params["data.train_size"] == ddp.data.params["data.train_size"]
    odd = int(single.data.params["data.train_size"]) % 2  # left out of each epoch under 2 ranks
    assert ddp.data.metrics["cost/train_samples"] == single.data.metrics["cost/train_samples"] - 8 * odd
    assert ddp.data.metrics["test/acc"] > 0.2  # it learned (10 classes: chance is 0.1)


@pytest.mark.slow  # ~15 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_ddp_rejects_what_it_cannot_run(tmp_path):
    command = [sys.executable, "-m", "trainwise", "train", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    for overrides, says in [
        (["accelerator=ddp_cpu", "strategy=lp_ft"], "unfreeze_at_epoch"),
        (["accelerator=ddp_cpu", "accelerator.num_nodes=2"], "hydra/launcher=slurm"),
    ]:
        done = subprocess.run([*command, *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        assert says in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("size, min_batches", [(1101, 1), (10, 6)])
def test_each_rank_gets_its_own_share_of_every_epoch_in_as_many_steps(size, min_batches):
    from trainwise.data.batches import EpochBatches

    for epoch in (0, 1):
        shares = []
        for rank in range(3):
            batches = EpochBatches(size, 64, seed=7, shuffle=True, min_batches=min_batches, rank=rank, world_size=3)
            batches.set_epoch(epoch)
            shares.append([b.tolist() for b in batches])
            assert len(shares[-1]) == len(batches)
        assert len({len(share) for share in shares}) == 1  # same number of steps on every rank: no DDP hang
        passes = EpochBatches(size, 64, 7, True, min_batches, 0, 3).passes
        seen = [i for share in shares for batch in share for i in batch]
        assert len(seen) == passes * (size - size % 3)  # only the odd ones out are left out of a pass
        per_pass = [set() for _ in range(passes)]
        for share in shares:
            per_batch = len(share) // passes
            for p in range(passes):
                for batch in share[p * per_batch : (p + 1) * per_batch]:
                    assert not per_pass[p] & set(batch)  # no image twice in one pass, across ranks
                    per_pass[p] |= set(batch)
    # Evaluation keeps every image, each on one rank.
    evaluation = [EpochBatches(size, 64, 7, False, rank=r, world_size=3) for r in range(3)]
    assert sorted(i for b in evaluation for batch in b for i in batch.tolist()) == list(range(size))


@pytest.mark.slow
def test_ctrl_c_on_rank_0_stops_every_rank_and_the_run_resumes_under_ddp(tmp_path):
    import signal
    import time

    command = [sys.executable, "-m", "trainwise", "train", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    long = ["accelerator=ddp_cpu", "trainer.max_epochs=300", "last_checkpoint_every_s=0"]
    log = tmp_path / "out.txt"
    with open(log, "w") as out:
        rank0 = subprocess.Popen([*command, *long], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while "epoch 3/300" not in log.read_text() and time.time() < deadline:
            time.sleep(0.5)
        rank0.send_signal(signal.SIGINT)  # rank 0 only: the ranks decide together to stop
        assert rank0.wait(timeout=120) == 130, log.read_text()[-3000:]
    _, (run,) = runs(tmp_path)
    assert run.info.status == "KILLED"

    wrong = subprocess.run([*command, f"resume={run.info.run_id}"], cwd=tmp_path, capture_output=True, text=True)
    assert wrong.returncode == 2 and "accelerator=ddp_cpu" in wrong.stderr  # it must resume the way it ran
    resume = [f"resume={run.info.run_id}", "accelerator=ddp_cpu"]
    done = subprocess.run([*command, *resume], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client, (resumed,) = runs(tmp_path)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 300


@pytest.mark.slow
def test_a_ddp_sweep_parent_covers_every_job_and_other_ranks_never_touch_the_store(tmp_path):
    """Rank 1 inherited the sweep's parent-run variables and ended the parent (with a report of job 0 only)
    when its own process ended, before job 1 started."""
    command = [sys.executable, "-m", "trainwise", "train", "-m", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    sweep = ["accelerator=ddp_cpu", "profile=smoke", "seed=0,1"]
    done = subprocess.run([*command, *sweep], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("trainwise").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`trainwise.role` = 'sweep'")
    jobs = client.search_runs([experiment], "tags.`trainwise.role` = 'job'", order_by=["attributes.start_time ASC"])
    assert len(jobs) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)
    assert parent.info.status == "FINISHED"
    assert parent.info.end_time >= max(r.info.end_time for r in jobs)  # ended after the last job, not the first
    report = (tmp_path / parent.data.tags["trainwise.sweep_dir"] / "report" / "report.md").read_text()
    (row,) = [line for line in report.splitlines() if line.startswith("| scratch")]
    assert row.rstrip(" |").endswith("| 2"), row  # the "runs" column: both jobs
    for job in jobs:
        rank1 = (Path(job.data.tags["trainwise.job_dir"]) / "ddp" / "rank1.log").read_text()
        assert "Sweep parent" not in rank1 and "test acc" not in rank1.lower(), rank1[-2000:]


@pytest.mark.slow
def test_a_rank_0_config_error_under_ddp_ends_at_once(tmp_path):
    """The other ranks waited 2 minutes at a barrier rank 0 never reached."""
    import time

    command = [sys.executable, "-m", "trainwise", "train", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    bad = ["accelerator=ddp_cpu", "dataset=imagefolder", f"dataset.root={tmp_path / 'no-such-folder'}"]
    started = time.monotonic()
    done = subprocess.run([*command, *bad], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert done.returncode == 2 and "is not a folder" in done.stderr.strip().splitlines()[-1], done.stderr[-2000:]
    assert took < 60, f"{took:.0f} s for a one-line error"


def test_ranks_decide_together_when_last_ckpt_is_due():
    """Each rank's clock said whether last.ckpt was due; a rank that saved waited alone in the checkpoint's
    barrier while the other trained on (both hung). Rank 0's decision is broadcast."""
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import ModelCheckpoint

    from trainwise.callbacks import BestCheckpoint, LastCheckpoint

    saved = []
    last = LastCheckpoint("/tmp/x", every_s=30, best=BestCheckpoint("/tmp/x"))
    last._saved_at = -1e9  # this rank's clock: long due
    rank0_says = SimpleNamespace(broadcast=lambda value, src=0: False)  # rank 0's clock: not due yet
    trainer = SimpleNamespace(
        should_stop=False, current_epoch=3, max_epochs=10, world_size=2, strategy=rank0_says, global_step=40, loggers=[]
    )
    original = ModelCheckpoint.on_train_epoch_end
    ModelCheckpoint.on_train_epoch_end = lambda self, trainer, module: saved.append(trainer.current_epoch)
    try:
        last.on_train_epoch_end(trainer, None)
    finally:
        ModelCheckpoint.on_train_epoch_end = original
    assert saved == []


def test_local_ranks_share_the_cores_this_process_may_use(monkeypatch):
    import os

    from trainwise.distributed import threads_per_rank

    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)  # what SLURM gave us
    assert threads_per_rank(2) == 2
    assert threads_per_rank(8) == 1


@pytest.mark.parametrize(
    ("rank", "address", "said"),
    [
        (0, "127.0.0.1", "Timed out"),  # rank 0 waits for a rank that never starts (another node that never came)
        (1, "no-such-node.invalid", ""),  # a rank whose master's name does not resolve
    ],
)
@pytest.mark.slow  # ~28 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_ranks_that_cannot_meet_fail_within_the_rendezvous_timeout_with_one_line(tmp_path, rank, address, said):
    """As ranks started by torchrun or SLURM: without the bound they waited for the group's hour."""
    import os
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": address, "MASTER_PORT": str(port)}
    command = [sys.executable, "-m", "trainwise", "train", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
               "accelerator=ddp_cpu", "accelerator.rendezvous_timeout_s=4", *SMALL]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert time.monotonic() - started < 60
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: DDP rank {rank} of 2 could not meet the others at {address}:{port} within 4 s"), (
        last
    )
    assert said in last and "Traceback" not in done.stderr
    if (tmp_path / "mlflow.db").exists():  # nothing left RUNNING
        client = mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
        ids = [e.experiment_id for e in client.search_experiments()]
        assert all(r.info.status != "RUNNING" for r in client.search_runs(ids))
