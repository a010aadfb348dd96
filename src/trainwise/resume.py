"""`trainwise train resume=<run_id>`: continue an interrupted run from its last checkpoint, into the same run."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainwise.errors import UserError
from trainwise.tracking.logged import find_run, logged_config


def resume_point(cfg: DictConfig, store, job_dir: Path):
    """(the run's own config, where to resume from). The checkpoints come from the run's job folder if it is
    still on this machine, else they are downloaded from MLflow into this job's folder."""
    from trainwise.context import ResumePoint

    run_id = str(cfg.resume)
    run = find_run(store, run_id)
    if run.info.status == "FINISHED":
        raise UserError(f"resume={run_id}: that run already FINISHED; there is nothing to continue")
    if run.info.status == "RUNNING":
        _check_stale(run, force=bool(cfg.get("force_resume")))
    logged = logged_config(store, run_id, trust=bool(cfg.trust))
    OmegaConf.set_struct(logged, False)
    logged.tracking = cfg.tracking  # the store we were asked to use
    logged.resume = run_id
    logged.trust = cfg.trust
    logged.force_resume = bool(cfg.get("force_resume"))

    folder = Path(run.data.tags.get("trainwise.job_dir", "/nonexistent")) / "checkpoints"
    downloads = job_dir / "resumed-from"
    checkpoint = _local_or_download(store, run_id, folder, "last.ckpt", downloads)
    if checkpoint is None:
        raise UserError(f"resume={run_id}: the run logged no checkpoints/last.ckpt; it cannot be continued")
    import torch

    meta = torch.load(checkpoint, map_location="cpu", weights_only=True).get("trainwise", {})
    channels, size = meta.get("input_shape", (None, None))
    if channels is None:
        raise UserError(f"resume={run_id}: {checkpoint} is not a trainwise checkpoint")
    # The best epoch so far: last.ckpt's state names it (and its score); testing and a later fine-tune load it.
    best = _local_or_download(store, run_id, folder, "best.ckpt", downloads)
    return logged, ResumePoint(
        run_id=run_id,
        checkpoint=str(checkpoint),
        input_shape=(int(channels), int(size)),
        best_checkpoint=str(best) if best is not None else None,
        preprocess=meta.get("preprocess"),
    )


def _check_stale(run, force: bool) -> None:
    """A RUNNING run may still be training somewhere: resuming it too would make two processes write one run.
    It may continue if its process is gone (same machine), or when the user says so."""
    run_id = run.info.run_id
    host, pid = run.data.tags.get("trainwise.host"), run.data.tags.get("trainwise.pid")
    if host == socket.gethostname() and pid and not _alive(int(pid)):
        print(f"Run {run_id} was left RUNNING by process {pid}, which is gone: continuing it.", flush=True)
        return
    if force:
        print(f"Run {run_id} is RUNNING; continuing it as asked (force_resume=true).", flush=True)
        return
    where = f"process {pid} on {host}" if host and pid else "an unknown process"
    raise UserError(
        f"resume={run_id}: that run is still RUNNING ({where}); stop it first (Ctrl+C, or kill {pid or 'it'} on "
        f"{host or 'its machine'}: it ends KILLED), or, if that process is gone (its machine died), continue anyway "
        f"with force_resume=true"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _local_or_download(store, run_id: str, folder: Path, name: str, downloads: Path) -> Path | None:
    if (folder / name).is_file():
        return folder / name
    from mlflow.artifacts import download_artifacts

    downloads.mkdir(parents=True, exist_ok=True)
    try:
        return Path(download_artifacts(run_id=run_id, artifact_path=f"checkpoints/{name}", dst_path=str(downloads),
                                       tracking_uri=store.uri))  # fmt: skip
    except Exception:  # noqa: BLE001 - the run has no such artifact
        return None
