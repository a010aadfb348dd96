"""Watching a sweep's SLURM jobs (`hydra/launcher=slurm`) so that it never pends or hangs without saying why.

After submission the jobs are polled with `squeue` (quietly: no accounting database is needed, so submitit's
"Bypassing sacct error" lines never appear), one status line per change. A job SLURM says can never start
(`PartitionConfig`: it asks for more than the partition has; `ReqNodeNotAvail`, ...) cancels the sweep's jobs and
stops it with one line naming the settings to change (exit code 2). A job that leaves the queue without a result
(scancel, a node lost) is a failed job of the sweep, which goes on past it.

Written here because submitit waits on `sacct`, which many clusters (and every small one) do not run, and never
looks at why a job pends.
"""

from __future__ import annotations

import subprocess
import time

from trainwise.errors import UserError

POLL_S = 2.0
# squeue's reasons for a pending job that will not start as submitted (SLURM's job_reason codes).
NEVER_STARTS = {
    "PartitionConfig": "it asks for more CPUs, memory or GPUs per node than partition {partition} has",
    "PartitionNodeLimit": "it asks for more nodes than partition {partition} has",
    "PartitionTimeLimit": "its time limit is above partition {partition}'s",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "BadConstraints": "no node of partition {partition} meets its constraints",
    "InvalidAccount": "its account is not valid",
    "InvalidQOS": "its QOS is not valid",
    "PartitionDown": "partition {partition} is down",
    "PartitionInactive": "partition {partition} is inactive",
}
SIZE_KEYS = (
    "hydra.launcher.cpus_per_task, hydra.launcher.mem_gb, hydra.launcher.gpus_per_node (or accelerator=cpu), "
    "hydra.launcher.timeout_min, hydra.launcher.nodes (accelerator.num_nodes)"
)


def squeue(array_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} of the jobs of these arrays still in the queue."""
    out = subprocess.run(
        ["squeue", "-h", "-j", ",".join(array_ids), "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:  # "Invalid job id specified": every job of the arrays has left the queue
        return {}
    jobs = {}
    for line in out.stdout.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        jobs[job_id.strip()] = (state.strip(), reason.strip())
    return jobs


def partition_limits(partition: str | None) -> str:
    """What the partition's nodes have, in words (for the error line)."""
    command = ["sinfo", "-h", "-o", "%P %c %m %G %l"] + (["-p", partition] if partition else [])
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    first = out.stdout.strip().splitlines()[0].split() if out.returncode == 0 and out.stdout.strip() else []
    if len(first) < 5:
        return ""
    name, cpus, memory, gres, limit = first[:5]
    return f" (partition {name.rstrip('*')}: {cpus} CPUs and {memory} MB a node, GPUs: {gres}, time limit {limit})"


def watch(array_ids: list[str], launcher_params: dict, poll_s: float = POLL_S) -> None:
    """Poll until every job of the arrays has left the queue; a status line when the counts change. Raises
    UserError (after cancelling the arrays) for a job that can never start."""
    last = ""
    partition = launcher_params.get("partition")
    while True:
        jobs = squeue(array_ids)
        for job_id, (state, reason) in jobs.items():
            if state == "PENDING" and reason in NEVER_STARTS:
                subprocess.run(["scancel", *array_ids], capture_output=True, timeout=60)
                why = NEVER_STARTS[reason].format(partition=partition or "(default)")
                asked = ", ".join(
                    f"{key}={launcher_params.get(key)}"
                    for key in ("cpus_per_task", "mem_gb", "gpus_per_node", "nodes", "timeout_min")
                    if launcher_params.get(key) is not None
                )  # fmt: skip
                raise UserError(
                    f"SLURM job {job_id} can never start ({reason}: {why}; asked {asked}){partition_limits(partition)};"
                    f" the sweep's jobs are cancelled. Size {SIZE_KEYS} to the partition"
                )
        counts: dict[str, int] = {}
        for state, reason in jobs.values():
            label = f"{state} ({reason})" if state == "PENDING" and reason not in ("", "None") else state
            counts[label] = counts.get(label, 0) + 1
        line = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
        if line and line != last:
            print(f"SLURM jobs {','.join(array_ids)}: {line}", flush=True)
            last = line
        if not jobs:
            return
        time.sleep(poll_s)


def submission_error(error: Exception) -> UserError:
    """sbatch's refusal (an unknown partition, a GPU request on a partition without GPUs) as one line."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower() and "sbatch" in line.lower()]
    detail = lines[-1] if lines else (text.strip().splitlines() or [type(error).__name__])[-1]
    hint = (
        "the partition has no GPUs: run with accelerator=cpu, or hydra.launcher.gpus_per_node=0"
        if "gres" in detail.lower()
        else "check hydra.launcher.partition (sinfo lists them) and " + SIZE_KEYS
    )
    return UserError(f"SLURM refused the sweep's jobs ({detail[:300]}); {hint}")
