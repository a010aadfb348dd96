"""hydra-submitit-launcher's SLURM launcher, with the sweep's jobs watched by trainwise.slurm: a job that can never
start stops the sweep with one line, polling is quiet, and a job that ends without a result is a failed job."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class TrainwiseSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides, initial_job_idx: int):
        import submitit

        from trainwise import slurm
        from trainwise.errors import UserError

        # As hydra-submitit-launcher 1.2's launch, up to the submission; then the watch instead of waiting on sacct.
        params = dict(self.params)
        executor = submitit.AutoExecutor(cluster="slurm", folder=params["submitit_folder"],
                                         slurm_max_num_timeout=params.get("max_num_timeout", 0))  # fmt: skip
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        skip = {"submitit_folder", "max_num_timeout"}
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        try:
            try:
                jobs = executor.map_array(self, *zip(*job_params, strict=True))
            except Exception as err:  # noqa: BLE001 - submitit raises sbatch's refusal as a plain error
                raise slurm.submission_error(err) from None
            arrays = sorted({str(job.job_id).split("_")[0] for job in jobs})
            print(f"Submitted SLURM array job(s) {', '.join(arrays)} ({len(jobs)} jobs); logs in "
                  f"{params['submitit_folder']}", flush=True)  # fmt: skip
            slurm.watch(arrays, params)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(err.exit_code) from None
        logging.getLogger("submitit").setLevel(logging.ERROR)  # the results are on disk: no sacct needed
        return [self._result(job) for job in jobs]

    def _result(self, job) -> JobReturn:
        """The job's JobReturn; one that left the queue without a result (scancel, a lost node) is a failed job of
        the sweep, which goes on past it."""
        from trainwise.app import FAILED_JOBS

        if job.paths.result_pickle.exists():
            try:
                return job.results()[0]
            except Exception as err:  # noqa: BLE001 - the job raised (interrupted, killed): its run says how
                first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
                message = f"SLURM job {job.job_id} failed ({first[:300]}); its log: {job.paths.stderr}"
        else:
            message = (
                f"SLURM job {job.job_id} ended without a result (cancelled, or its node was lost); its log: "
                f"{job.paths.stderr}"
            )
        print(f"error: {message}", file=sys.stderr, flush=True)
        FAILED_JOBS.append(message)
        result = JobReturn()
        result.status = JobStatus.COMPLETED  # counted in FAILED_JOBS: the sweep goes on and exits 1
        result.return_value = None
        return result
