"""DDP: every rank runs the same recipe; rank 0 owns the MLflow run and decides, the other ranks follow.

Where the ranks come from:
- `accelerator=ddp` / `ddp_cpu` on one machine: the job starts its other local ranks itself, each as
  `python -m trainwise train <this job's overrides>` (hand-written because Lightning's own launcher re-runs
  `sys.argv`, which in a Hydra multirun is the whole sweep, and in `trainwise train` is not a script);
- SLURM (`hydra/launcher=slurm`, one task per device): srun started every rank already;
- torchrun: likewise (RANK, LOCAL_RANK, WORLD_SIZE in the environment).

The process group is opened here, before Lightning's Trainer (Lightning reuses an open group), so that rank 0
can hand its plan (the run id, the config it resolved, the foundation's weights, a resume checkpoint) to the
other ranks before training: they never touch the tracking store and log nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from trainwise.errors import UserError

# Rank 0 may spend a while before its plan is ready (resolving or downloading a foundation).
_GROUP_TIMEOUT = timedelta(minutes=60)
RENDEZVOUS_TIMEOUT_S = 300  # accelerator.rendezvous_timeout_s's default: every rank started, slow nodes included
_STARTED_HERE = "TRAINWISE_LOCAL_RANKS"  # set while the ranks are ones trainwise started on this machine
_RANK_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
_RANK_ENV += (_STARTED_HERE,)


@dataclass
class World:
    """This process's place among the ranks of one job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    children: list[subprocess.Popen] = field(default_factory=list)  # local ranks this process started
    plan_sent: bool = False
    trained: bool = False  # a plan went out (rank 0) or came in: the ranks train together and meet at the end

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def send_plan(self, plan) -> None:
        """Rank 0: what every rank trains (None: nothing, e.g. the run failed before training)."""
        if self.distributed and not self.plan_sent:
            _broadcast(plan)
            self.trained = plan is not None
        self.plan_sent = True

    def receive_plan(self):
        plan = _broadcast(None)
        self.trained = plan is not None
        return plan

    def total(self, value: float) -> float:
        """The sum of `value` over all ranks (every rank must call it)."""
        if not self.distributed:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return float(tensor.item())


def uses_ddp(accelerator_cfg) -> bool:
    return str(accelerator_cfg.get("strategy", "auto")) == "ddp"


@contextmanager
def ranks(accelerator_cfg, job_dir: Path, overrides: list[str]):
    """The World of this job. For DDP: starts the local ranks (unless a cluster did), opens the process group,
    and at the end releases the other ranks (if rank 0 never sent a plan) and closes the group."""
    if not uses_ddp(accelerator_cfg):
        yield World()
        return
    import torch

    saved = {k: os.environ.get(k) for k in _RANK_ENV}
    threads = torch.get_num_threads()
    world = _join_or_start(accelerator_cfg, job_dir, overrides)
    watcher = _watch(world, job_dir) if world.children else None
    try:
        _open_group(accelerator_cfg, world)
        yield world
        if world.is_global_zero:
            world.send_plan(None)  # a no-op when the plan went out
        if world.trained:  # every rank's collectives are done before any rank tears its group down
            import torch.distributed as dist

            dist.barrier()
    except BaseException:
        failed = True
        if world.is_global_zero and not world.plan_sent:
            _release_quietly(world)  # the others learn there is nothing to train, and end
        raise
    else:
        failed = False
    finally:
        if watcher is not None:
            watcher.done.set()
        _close(world, failed)
        for key, value in saved.items():  # a later job of this process may not be DDP
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(threads)


def cluster_plugins() -> list:
    """For Lightning's Trainer: ranks trainwise started describe themselves in the environment (LOCAL_RANK, ...),
    even inside a SLURM allocation, where Lightning would otherwise read every rank as SLURM's task 0."""
    if not os.environ.get(_STARTED_HERE):
        return []
    from lightning_fabric.plugins.environments import LightningEnvironment

    return [LightningEnvironment()]


def _devices_per_node(accelerator_cfg) -> int:
    devices = accelerator_cfg.get("devices", "auto")
    if str(devices) == "auto":
        import torch

        if str(accelerator_cfg.accelerator) == "cpu":
            raise UserError("accelerator.devices=auto with accelerator=ddp_cpu: give a number of processes")
        devices = torch.cuda.device_count()
        if devices == 0:
            raise UserError("accelerator=ddp found no GPU; use accelerator=ddp_cpu for CPU processes")
    if not isinstance(devices, int) or devices < 1:
        raise UserError(f"accelerator.devices={devices!r} must be a positive number of devices per node, or auto")
    return devices


def _join_or_start(accelerator_cfg, job_dir: Path, overrides: list[str]) -> World:
    per_node = _devices_per_node(accelerator_cfg)
    num_nodes = int(accelerator_cfg.get("num_nodes", 1))
    if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by trainwise (below) or torchrun
        by_node = int(os.environ.get("NODE_RANK", 0)) * per_node + int(os.environ["LOCAL_RANK"])
        rank = int(os.environ.get("RANK", by_node))
        return World(rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    slurm = _slurm_environment()
    if slurm is not None and slurm.world_size() > 1:
        if slurm.world_size() != per_node * num_nodes:
            raise UserError(
                f"SLURM started {slurm.world_size()} tasks but accelerator asks for {num_nodes} node(s) x {per_node} "
                "device(s); the slurm launcher preset derives tasks from accelerator.num_nodes and accelerator.devices"
            )
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = slurm.main_address, str(slurm.main_port)
        return World(rank=slurm.global_rank(), world_size=slurm.world_size())
    if num_nodes > 1:
        raise UserError(
            f"accelerator.num_nodes={num_nodes} needs a cluster to start the ranks on the other nodes: "
            "run the job with hydra/launcher=slurm (or under torchrun)"
        )
    if per_node == 1:
        return World()
    return _start_local_ranks(per_node, job_dir, overrides)


def _slurm_environment():
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment() if SLURMEnvironment.detect() else None


def _start_local_ranks(per_node: int, job_dir: Path, overrides: list[str]) -> World:
    """Ranks 1..n-1 of this machine, each running this job's config (Hydra run mode, same job folder)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        NODE_RANK="0",
        LOCAL_RANK="0",  # Lightning: the processes exist already, it starts none of its own
        RANK="0",
        WORLD_SIZE=str(per_node),
        **{_STARTED_HERE: "1"},
    )
    if "OMP_NUM_THREADS" not in os.environ:  # as Lightning's own launcher does: ranks share the cores, not each all
        import torch

        threads = threads_per_rank(per_node)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    job_dir = job_dir.resolve()
    logs = job_dir / "ddp"
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "trainwise", "train", *overrides, "hydra.mode=RUN",
               f"hydra.run.dir={job_dir}", "hydra.output_subdir=null", "hydra/job_logging=disabled"]  # fmt: skip
    # The other ranks never touch the tracking store: nothing that names a store or the sweep's parent run goes
    # to them (a rank that saw the sweep's variables would end the parent run when its own process ends).
    from trainwise.config import environ
    from trainwise.sweep import SWEEP_RUN_ENV, SWEEP_STORE_ENV

    private = {SWEEP_RUN_ENV, SWEEP_STORE_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"}
    shared = {k: v for k, v in environ().items() if k not in private}
    children = []
    for local_rank in range(1, per_node):
        env = shared | {"LOCAL_RANK": str(local_rank), "RANK": str(local_rank)}
        with open(logs / f"rank{local_rank}.log", "w") as out:
            children.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
    return World(rank=0, world_size=per_node, children=children)


def threads_per_rank(ranks: int) -> int:
    """The CPU threads each local rank gets: the cores this process may run on (its affinity, as Lightning reads
    it; a SLURM or container CPU limit is smaller than the machine's count), shared out."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // ranks)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _open_group(accelerator_cfg, world: World) -> None:
    import torch
    import torch.distributed as dist

    on_gpu = str(accelerator_cfg.accelerator) in ("gpu", "cuda")
    if on_gpu:  # each rank on its own GPU before NCCL sees any tensor
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))))
    if not dist.is_initialized():
        # The ranks meet at a store of our own (bounded by accelerator.rendezvous_timeout_s: a rank that cannot reach
        # MASTER_ADDR must not wait an hour), then the group's collectives get the long timeout.
        store = _rendezvous(world, float(accelerator_cfg.get("rendezvous_timeout_s", RENDEZVOUS_TIMEOUT_S)))
        dist.init_process_group(
            "nccl" if on_gpu else "gloo", store=store, rank=world.rank, world_size=world.world_size,
            timeout=_GROUP_TIMEOUT,
        )  # fmt: skip


def _rendezvous(world: World, timeout_s: float):
    """A TCPStore at MASTER_ADDR:MASTER_PORT that every rank joins within timeout_s, else a UserError naming where
    the ranks tried to meet."""
    import torch.distributed as dist

    address, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    try:
        return dist.TCPStore(
            address, port, world.world_size, is_master=world.rank == 0, timeout=timedelta(seconds=timeout_s),
            wait_for_workers=True,
        )  # fmt: skip
    except (RuntimeError, OSError, ValueError) as err:  # DistStoreError, DistNetworkError (RuntimeErrors), gaierror
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(
            f"DDP rank {world.rank} of {world.world_size} could not meet the others at {address}:{port} within "
            f"{timeout_s:g} s (accelerator.rendezvous_timeout_s): {first}; check that {address} resolves and is "
            "reachable from every node, that the port is free, and that every rank started"
        ) from None


def _collective_device():
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _broadcast(obj):
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def _release_quietly(world: World) -> None:
    try:
        world.send_plan(None)
    except Exception:  # noqa: BLE001 - the other ranks are already gone; nothing to release
        pass


def _close(world: World, failed: bool = False) -> None:
    """Wait for the local ranks (they end right after the last barrier) and close the group. When rank 0 failed,
    the others are stopped: they may be waiting in a collective rank 0 will never join."""
    import torch.distributed as dist

    for child in world.children:
        if failed and child.poll() is None:
            child.terminate()
        try:
            child.wait(timeout=10 if failed else 120)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if dist.is_initialized():
        dist.destroy_process_group()


class _Watcher(threading.Thread):
    """Rank 0's eye on the ranks it started: when one dies, the others are stopped (a collective would
    otherwise wait for it until the group's timeout) and its log is named."""

    def __init__(self, world: World, job_dir: Path):
        super().__init__(daemon=True, name="trainwise-ddp-watcher")
        self.world, self.job_dir, self.done = world, job_dir, threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            for local_rank, child in enumerate(self.world.children, start=1):
                code = child.poll()
                if code not in (None, 0):
                    log = self.job_dir / "ddp" / f"rank{local_rank}.log"
                    print(f"error: DDP rank {local_rank} exited with code {code}; its output is in {log}",
                          file=sys.stderr, flush=True)  # fmt: skip
                    for other in self.world.children:
                        if other.poll() is None:
                            other.kill()
                    _abort_collectives()
                    return


def _abort_collectives() -> None:
    """Rank 0 itself may be waiting in a collective with the dead rank. Gloo notices (the connection resets);
    NCCL would wait out the group's timeout (60 minutes), so its communicators are aborted: rank 0's pending
    collective fails, and the run ends FAILED. (Not exercised by the tests: they have no GPU.)"""
    import torch.distributed as dist

    try:
        if dist.is_initialized() and dist.get_backend() == "nccl":
            from torch.distributed.distributed_c10d import _abort_process_group

            _abort_process_group()
    except Exception:  # noqa: BLE001 - best effort: the group may be gone already
        pass


def _watch(world: World, job_dir: Path) -> _Watcher:
    watcher = _Watcher(world, job_dir.resolve())
    watcher.start()
    return watcher
