"""`trainwise reproduce RUN_ID`: run a logged run again from its logged config and compare the metrics."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from trainwise.tracking.logged import find_run, logged_config

# How each compared metric may differ: accuracies by an absolute amount (0.01 = one point), losses relative to
# the original (a loss's scale depends on the task), parameter counts not at all (the same architecture).
COMPARED = {
    "test/acc": "absolute",
    "test/loss": "relative",
    "val/acc_best": "absolute",
    "model/params_total": "exact",
    "model/params_trainable": "exact",
}
# What a run logs when it ends FINISHED (a KILLED or FAILED run has none of them; parameter counts prove nothing).
OUTCOMES = ("test/acc", "test/loss", "val/acc_best")
DEFAULT_TOLERANCE = 0.01  # where runs are not bitwise repeatable: one accuracy point, 1 % of the loss
# Tags that say which code produced a run: a difference is worth a warning, not a refusal.
_PROVENANCE = ("mlflow.source.git.commit", "trainwise.git_dirty")


def reproduce(run_id: str, tracking_uri: str, trust: bool = False, tolerance: float | None = None) -> int:
    from trainwise.jobs import JobContext, run
    from trainwise.provenance import code_and_versions
    from trainwise.tracking import open_store

    store = open_store(tracking_uri)
    original = find_run(store, run_id)
    if not any(key in original.data.metrics for key in OUTCOMES):
        print(
            f"Nothing to compare: run {run_id} ended {original.info.status} and logged none of {', '.join(OUTCOMES)}"
            + (f"; `trainwise train resume={run_id}` continues it" if original.info.status == "KILLED" else ""),
            file=sys.stderr,
        )
        return 1
    cfg = logged_config(store, run_id, trust=trust)
    OmegaConf.set_struct(cfg, False)
    cfg.tracking.uri = store.uri
    cfg.tracking.experiment = store.client.get_experiment(original.info.experiment_id).name
    cfg.resume, cfg.sweep.skip_finished = None, False
    foundation = original.data.tags.get("trainwise.foundation_run")
    if foundation:
        # The exact foundation the original started from, not whichever is newest today.
        is_run = len(foundation) == 32 and all(c in "0123456789abcdef" for c in foundation)
        if is_run:
            cfg.strategy.pretrained = f"runs:/{foundation}/checkpoints/best.ckpt"
        elif foundation.startswith("timm:"):  # timm's weights for model.name (the tag names them timm:<name>)
            cfg.strategy.pretrained = "timm"
        else:  # a local file, as given
            cfg.strategy.pretrained = foundation

    for warning in _provenance_warnings(original.data.tags, code_and_versions()):
        print(f"warning: {warning}")

    job_dir = Path("outputs") / "reproduce" / f"{run_id[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = _logged_overrides(store, run_id)
    result = run(
        cfg, JobContext(job_dir=job_dir, overrides=overrides, extra_tags={"trainwise.reproduced_from": run_id})
    )

    exact = bool(cfg.deterministic) and cfg.accelerator.accelerator in ("cpu", "auto") and not _cuda()
    allowed = tolerance if tolerance is not None else (0.0 if exact else DEFAULT_TOLERANCE)
    return _compare(original.data.metrics, result.metrics, allowed, run_id, result.run_id)


def _provenance_warnings(logged: dict[str, str], now: dict[str, str]) -> list[str]:
    warnings = []
    for key in sorted(set(logged) | set(now)):
        if not (key in _PROVENANCE or key.startswith("trainwise.version.")):
            continue
        if logged.get(key) != now.get(key):
            warnings.append(f"{key} was {logged.get(key, 'unknown')}, now {now.get(key, 'unknown')}")
    return warnings


def _compare(before: dict[str, float], after: dict[str, float], tolerance: float, old: str, new: str) -> int:
    """0 if every outcome both runs logged is within the tolerance (see COMPARED), 1 if one differs or if there is
    no outcome to compare."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reproduce {old[:8]} -> {new[:8]} (tolerance {tolerance:g})")
    for column in ("metric", "original", "reproduced", "difference", "allowed", ""):
        table.add_column(column, justify="right")
    differ, compared = False, []
    for key, kind in COMPARED.items():
        if key not in before or key not in after:
            continue
        compared.append(key)
        delta = after[key] - before[key]
        allowed = {"absolute": tolerance, "relative": tolerance * abs(before[key]), "exact": 0.0}[kind]
        ok = abs(delta) <= allowed
        differ |= not ok
        cells = (f"{before[key]:.6g}", f"{after[key]:.6g}", f"{delta:+.3g}", f"{allowed:.3g}")
        table.add_row(key, *cells, "ok" if ok else "DIFFERS")
    if not any(key in compared for key in OUTCOMES):
        print(f"Nothing to compare: the runs share none of {', '.join(OUTCOMES)}.")
        return 1
    Console().print(table)
    print("Metrics differ beyond the tolerance." if differ else "Metrics match.")
    return 1 if differ else 0


def _logged_overrides(store, run_id: str) -> list[str]:
    import tempfile

    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_artifacts(
                run_id=run_id, artifact_path="config/overrides.yaml", dst_path=tmp, tracking_uri=store.uri
            )
        except Exception:  # noqa: BLE001 - older runs may lack it; the resolved config is what matters
            return []
        return [str(o) for o in OmegaConf.load(path)]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
