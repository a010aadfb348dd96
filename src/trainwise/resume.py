"""`trainwise train resume=<run_id>`: continue an interrupted run from its last checkpoint, into the same run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainwise.errors import UserError
from trainwise.replay import find_run, logged_config


def resume_point(cfg: DictConfig, store):
    """(the run's own config, where to resume from). The checkpoint comes from the run's job folder if it is
    still on this machine, else it is downloaded from MLflow."""
    from trainwise.train import ResumePoint

    run_id = str(cfg.resume)
    run = find_run(store, run_id)
    if run.info.status == "FINISHED":
        raise UserError(f"resume={run_id}: that run already FINISHED; there is nothing to continue")
    logged = logged_config(store, run_id, trust=bool(cfg.trust))
    OmegaConf.set_struct(logged, False)
    logged.tracking = cfg.tracking  # the store we were asked to use
    logged.resume = run_id
    logged.trust = cfg.trust

    local = Path(run.data.tags.get("trainwise.job_dir", "/nonexistent")) / "checkpoints" / "last.ckpt"
    checkpoint = local if local.is_file() else _download_last_checkpoint(store, run_id)
    import torch

    meta = torch.load(checkpoint, map_location="cpu", weights_only=True).get("trainwise", {})
    channels, size = meta.get("input_shape", (None, None))
    if channels is None:
        raise UserError(f"resume={run_id}: {checkpoint} is not a trainwise checkpoint")
    return logged, ResumePoint(run_id=run_id, checkpoint=str(checkpoint), input_shape=(int(channels), int(size)))


def _download_last_checkpoint(store, run_id: str) -> Path:
    from mlflow.artifacts import download_artifacts

    folder = Path(tempfile.mkdtemp(prefix=f"trainwise-resume-{run_id[:8]}-"))
    try:
        return Path(download_artifacts(run_id=run_id, artifact_path="checkpoints/last.ckpt", dst_path=str(folder),
                                       tracking_uri=store.uri))  # fmt: skip
    except Exception:  # noqa: BLE001
        raise UserError(f"resume={run_id}: the run logged no checkpoints/last.ckpt; it cannot be continued") from None
