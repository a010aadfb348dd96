"""What a job is given and what it gives back: the data `jobs.py` (what to train) and `train.py` (the recipe)
share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class JobContext:
    """Where a run writes locally and what Hydra recorded about how it was launched."""

    job_dir: Path
    overrides: list[str] = field(default_factory=list)
    hydra_yaml: Path | None = None
    parent_run_id: str | None = None
    extra_tags: dict[str, str] = field(default_factory=dict)
    signals: object = None  # trainwise.signals.RunSignals: SIGINT/SIGTERM while the run lives
    callbacks: list = field(default_factory=list)  # extra Lightning callbacks for the Trainer (the benchmarks' timer)
    test: bool = True  # False for a learning-rate search's trials: chosen on validation, they are never tested


@dataclass
class ResumePoint:
    """An interrupted run to continue: its id, its last checkpoint, the input shape its model was built for."""

    run_id: str
    checkpoint: str
    input_shape: tuple[int, int]
    best_checkpoint: str | None = None  # the run's best.ckpt, which last.ckpt's state names
    preprocess: dict | None = None  # the input normalization it trained with (models.preprocess.Preprocess)


@dataclass
class Plan:
    """What rank 0 decided before training, and hands every other rank (they never touch the tracking store)."""

    cfg: dict | None = None
    run_id: str = ""
    foundation: object = None  # pretrained.Foundation: the weights a fine-tune starts from
    resume: ResumePoint | None = None


@dataclass
class RunResult:
    run_id: str
    experiment_id: str
    metrics: dict[str, float]
