"""The benchmark harness: epoch timing (the same boundaries for trainwise, Lightning and the hand loops), a
Python call counter, interleaved repetitions, quiet output, and the composed config a run would use."""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


BIN = Path(sys.executable).parent


def sync() -> None:
    import torch

    if torch.cuda.is_initialized():  # not is_available(): on a CPU machine that asks NVML, ~0.4 ms a call
        torch.cuda.synchronize()


def epoch_figures(starts: list[float], end: float, window_ends: list[float]) -> dict[str, float]:
    """Median cycle (start -> next start) and window (start -> validation end) over the epochs after the first."""
    cycles = [b - a for a, b in zip(starts, starts[1:] + [end], strict=True)]
    windows = [b - a for a, b in zip(starts, window_ends, strict=False)]
    later = slice(1, None) if len(cycles) > 1 else slice(None)
    return {
        "epoch_s": statistics.median(cycles[later]),
        "window_s": statistics.median(windows[later]) if windows else float("nan"),
        "epochs": len(cycles),
    }


class CallCounter:
    """Python function calls from the start of the second epoch to the end of training, per epoch: a measure of
    the work a loop does around the maths that, unlike wall time, a noisy machine does not change."""

    def __init__(self):
        self.profile = None
        self.epochs = 0

    def epoch_started(self, epoch: int) -> None:
        if epoch == 1:
            import cProfile

            self.profile = cProfile.Profile()
            self.profile.enable()
        if epoch >= 1:
            self.epochs += 1

    def stopped(self) -> None:
        if self.profile is not None:
            self.profile.disable()

    def per_epoch(self) -> float:
        import pstats

        return pstats.Stats(self.profile).total_calls / self.epochs if self.profile else float("nan")


def epoch_timer(count_calls: bool = False):
    import pytorch_lightning as pl

    class EpochTimer(pl.Callback):
        """Wall-clock marks at the start of each training epoch, the end of its validation, and the end of fit;
        with count_calls, the Python calls per epoch (profiled: the times of that run are not comparable)."""

        def __init__(self):
            self.starts: list[float] = []
            self.window_ends: list[float] = []
            self.end = 0.0
            self.calls = CallCounter() if count_calls else None

        def on_train_epoch_start(self, trainer, pl_module):
            if self.calls:
                self.calls.epoch_started(trainer.current_epoch)
            sync()
            self.starts.append(time.perf_counter())

        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                sync()
                self.window_ends.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            sync()
            self.end = time.perf_counter()
            if self.calls:
                self.calls.stopped()

        def figures(self) -> dict[str, float]:
            figures = epoch_figures(self.starts, self.end, self.window_ends)
            if self.calls:
                figures["python_calls_per_epoch"] = self.calls.per_epoch()
            return figures

    return EpochTimer()


def interleave(reps: int, baseline: Callable[[], float], candidate: Callable[[], float]) -> tuple[float, float]:
    """rep 1 baseline, rep 1 candidate, rep 2 baseline, ...; the median of each."""
    base, cand = [], []
    for _ in range(reps):
        base.append(baseline())
        cand.append(candidate())
    return statistics.median(base), statistics.median(cand)


class Terminal(io.StringIO):
    """A swallowed stdout that says it is a terminal, as a user's shell is."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def quiet(terminal: bool = False):
    """Swallow stdout (trainwise's epoch lines and run summary). stdout is then not a TTY, so trainwise uses its
    plain EpochLines callback, whatever terminal `make bench` runs in; terminal=True: trainwise sees a terminal
    and draws its progress bar, as for a user at a shell."""
    with contextlib.redirect_stdout(Terminal() if terminal else io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def compose(*overrides: str):
    """The config `trainwise train <overrides>` would run (as tests/helpers.py composes it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from trainwise.app import register_experiments
    from trainwise.paths import conf_dir

    register_experiments()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def default_max_epochs(cfg, datamodule) -> int:
    """What trainwise.train runs: trainer.max_epochs (tiny sets repeat within an epoch to reach min_train_steps;
    the digits-sized data here already has more steps per epoch than that)."""
    return cfg.trainer.max_epochs


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env
