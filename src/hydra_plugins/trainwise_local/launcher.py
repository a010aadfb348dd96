"""hydra-submitit-launcher's local launcher, with each job given its share of the machine's cores.

submitit starts every job of a sweep at once as a process of this machine, and torch gives each process a thread
per core: N jobs on C cores ran N x C threads, which the cores time-slice (Hydra's joblib launcher does not have
this problem: its loky workers get cores // N threads). Here the jobs inherit OMP_NUM_THREADS = cores // N, which
torch reads when it starts, unless the user set it."""

from __future__ import annotations

import os

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher


class TrainwiseLocalLauncher(LocalLauncher):
    def launch(self, job_overrides, initial_job_idx: int):
        from trainwise.distributed import threads_per_rank

        if "OMP_NUM_THREADS" in os.environ:
            return super().launch(job_overrides, initial_job_idx)
        # submitit's local controller copies os.environ into each job when it starts it, inside launch
        os.environ["OMP_NUM_THREADS"] = str(threads_per_rank(len(job_overrides)))
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            del os.environ["OMP_NUM_THREADS"]
