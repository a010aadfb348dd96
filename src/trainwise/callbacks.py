"""The small Lightning callbacks trainwise adds where Lightning has no equivalent."""

from __future__ import annotations

import contextlib
import functools
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.profilers import PassThroughProfiler

from trainwise.errors import Interrupted


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for checkpoints written at epoch ends only (trainwise writes none mid-epoch:
    a run cannot resume exactly from there). Lightning calls every callback at every hook of every batch; for a
    ModelCheckpoint that meant rebuilding its `state_key` string and checking its step/time triggers each time,
    about 5 % of trainwise's own Python calls per epoch on small_cnn/digits. Its settings never change after
    construction, so the key is built once and the batch-end check is skipped."""

    @functools.cached_property
    def state_key(self) -> str:
        return super().state_key

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pass

    def load_state_dict(self, state_dict: dict) -> None:
        # A resumed run writes into a new job folder. Lightning's version then restores only best_model_path
        # (with a warning) and forgets best_model_score, so the first epoch after a resume became "best" whatever
        # its score. Here the whole state is restored, its paths moved to this folder (resume puts the run's
        # best.ckpt there before fitting).
        old_dir = state_dict.get("dirpath")
        if old_dir and old_dir != self.dirpath:
            state_dict = dict(state_dict, dirpath=self.dirpath)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                state_dict[key] = _moved(state_dict.get(key, ""), old_dir, self.dirpath)
            models = state_dict.get("best_k_models", {})
            state_dict["best_k_models"] = {_moved(path, old_dir, self.dirpath): v for path, v in models.items()}
        super().load_state_dict(state_dict)


def _moved(path: str, old_dir: str, new_dir: str) -> str:
    if not path:
        return path
    return str(Path(new_dir) / Path(path).relative_to(old_dir)) if Path(path).is_relative_to(old_dir) else path


class BestCheckpoint(EpochCheckpoint):
    """`best.ckpt`: the weights (only) of the epoch with the highest val/acc, what testing and a later fine-tune
    load. Lightning's ModelCheckpoint writes the file at every improvement; with short epochs that write cost more
    than the training (head-only fine-tuning of resnet18 on cached features on 2 CPU cores: ~0.17 s to pickle and
    write 45 MB of mostly frozen weights, against ~0.04 s of training per epoch). Here an improvement copies the
    weights to host memory, and the file is written when something needs it: before each `last.ckpt` (whose resume
    state names best.ckpt and its score), when training ends or stops, and when it fails."""

    def __init__(self, dirpath, monitor: str | None = "val/acc"):
        # monitor None (no validation split): the newest epoch is the one kept, i.e. the last epoch is tested.
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor=monitor,
            mode="max",
            auto_insert_metric_name=False,
            enable_version_counter=False,
            save_weights_only=True,
        )
        self._held: tuple[str, dict] | None = None  # (path, checkpoint) not written yet

    def _save_checkpoint(self, trainer, filepath):
        # Lightning's version: trainer.save_checkpoint(), i.e. dump_checkpoint() + write + barrier, then the
        # loggers' after_save_checkpoint (a no-op for trainwise's logger: the files are logged after fit). Here
        # the checkpoint holds what is read from best.ckpt (testing, export, fine-tuning from the run): the
        # weights, epoch, step and the module's on_save_checkpoint additions, without dump_checkpoint's loop
        # progress, which nothing reads from a weights-only file and which cost ~4,500 Python calls per
        # improvement to record. Every rank takes the weights (a sharded strategy gathers them collectively);
        # only rank 0 will write.
        weights = trainer.strategy.lightning_module_state_dict()
        checkpoint = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "pytorch-lightning_version": pl.__version__,
            "state_dict": {name: _host_copy(tensor) for name, tensor in weights.items()},
        }
        trainer.lightning_module.on_save_checkpoint(checkpoint)
        self._held = (filepath, checkpoint)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    def write_held(self, trainer, wait_for_ranks: bool = True) -> None:
        if self._held is None:
            return
        filepath, checkpoint = self._held
        self._held = None
        trainer.strategy.save_checkpoint(checkpoint, filepath)
        if wait_for_ranks:  # the others may read the file next (trainer.test(ckpt_path="best"))
            trainer.strategy.barrier("best.ckpt")

    def on_train_end(self, trainer, pl_module):
        self.write_held(trainer)

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, Interrupted):
            # Stopped by a signal: resume continues from last.ckpt, which names the best.ckpt already on disk; a
            # newer best held here belongs to epochs that resume trains again.
            self._held = None
            return
        self.write_held(trainer, wait_for_ranks=False)  # a failing rank may be alone here


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


class LastCheckpoint(EpochCheckpoint):
    """`last.ckpt`, the full training state that `resume` continues from, written at the end of an epoch: the
    first one, then once `every_s` seconds have passed since the previous write, and always at the last epoch or
    when training stops early (Ctrl+C). Lightning's `train_time_interval` would save mid-epoch, from where a run
    cannot resume exactly; saving every epoch cost short epochs more than the training itself (2 CPU cores).
    A hard crash loses at most `every_s` seconds of training.

    It also carries what the run has cost so far (seconds in fit, images trained on, over every rank), so that
    a resumed run reports the cost of the whole run, and it tells the logger which epochs are now safe to send
    (RunLogger.checkpointed): a run stopped later resumes from here, and sends those epochs once, not twice."""

    def __init__(self, dirpath, every_s: float, best: BestCheckpoint, seconds_before_fit: float = 0.0):
        super().__init__(dirpath=dirpath, filename="last", enable_version_counter=False, save_on_train_epoch_end=True)
        self.every_s = every_s
        self.best = best  # runs earlier in the same hook (an earlier callback), so holds this epoch's improvement
        self._saved_at: float | None = None
        self.fit_seconds_before = seconds_before_fit  # cost of the run up to this fit (restored on resume)
        self.samples_before = 0
        self._fit_started = time.perf_counter()
        self._progress = {"fit_seconds": 0.0, "samples_trained": 0}

    def on_fit_start(self, trainer, pl_module):
        self._fit_started = time.perf_counter()

    def fit_seconds(self) -> float:
        """Seconds this run has spent training, this process's fit and the interrupted ones before it."""
        return self.fit_seconds_before + time.perf_counter() - self._fit_started

    def on_train_epoch_end(self, trainer, pl_module):
        # After the epoch's validation: the history of cost/fit_seconds against val/acc is the run's time to
        # accuracy (the report's "time to X % validation accuracy").
        for logger in trainer.loggers:
            if hasattr(logger, "log_epoch_cost"):
                logger.log_epoch_cost(trainer.current_epoch, trainer.global_step, self.fit_seconds())
        final = trainer.should_stop or trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        due = self._saved_at is None or time.monotonic() - self._saved_at >= self.every_s
        if trainer.world_size > 1:  # each rank's clock differs: rank 0 decides, or the one saving waits alone
            due = trainer.strategy.broadcast(due, src=0)
        if final or due:
            samples = trainer.strategy.reduce(
                torch.tensor(float(getattr(pl_module, "samples_trained", 0)), device=pl_module.device), reduce_op="sum"
            )
            self._progress = {
                "fit_seconds": self.fit_seconds(),
                "samples_trained": self.samples_before + int(samples.item()),
            }
            self.best.write_held(trainer)  # a resume from this last.ckpt finds the best.ckpt it names
            super().on_train_epoch_end(trainer, pl_module)
            self._saved_at = time.monotonic()
            for logger in trainer.loggers:
                if hasattr(logger, "checkpointed"):
                    logger.checkpointed(trainer.current_epoch)

    def state_dict(self) -> dict:
        return super().state_dict() | {"trainwise_progress": dict(self._progress)}

    def load_state_dict(self, state_dict: dict) -> None:
        progress = state_dict.get("trainwise_progress", {})
        self.fit_seconds_before += float(progress.get("fit_seconds", 0.0))
        self.samples_before = int(progress.get("samples_trained", 0))
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "trainwise_progress"})


class EpochLines(pl.Callback):
    """One plain line per epoch, for logs and CI where a progress bar would be noise (not a TTY).

    The module logs an epoch's train metrics in its own on_train_epoch_end, which Lightning calls after this
    callback's, so each line is printed when the next epoch starts (or training ends)."""

    def __init__(self):
        self._pending: int | None = None

    def on_train_epoch_end(self, trainer, pl_module):
        self._pending = trainer.current_epoch

    def on_train_epoch_start(self, trainer, pl_module):
        self._print(trainer)

    def on_train_end(self, trainer, pl_module):
        self._print(trainer)

    def _print(self, trainer) -> None:
        if self._pending is None or not trainer.is_global_zero:
            return
        shown = ("train/loss", "val/loss", "val/acc")
        metrics = trainer.callback_metrics
        values = "  ".join(f"{k} {float(metrics[k]):.4f}" for k in shown if k in metrics)
        print(f"epoch {self._pending + 1}/{trainer.max_epochs}  {values}", flush=True)
        self._pending = None


class GracefulStop(pl.Callback):
    """SIGINT/SIGTERM while training (see trainwise.signals): stop after the current batch, so trainwise can log
    the checkpoints and end the MLflow run KILLED. A second signal stops at once.

    Where it stops decides what `resume` finds. Mid-epoch, training stops by raising `Interrupted`: the partial
    epoch is neither validated nor saved (Lightning's `should_stop` would validate it and let last.ckpt record
    it as a whole epoch), and resume continues from the last complete epoch saved. After an epoch's last batch,
    or during its validation, the epoch completes and is saved (`should_stop`).

    Under DDP every rank must stop after the same batch, or the others wait forever in the next all-reduce: the
    ranks decide together (one rank signalled is enough) every CHECK_EVERY batches, at each epoch's last batch
    and at each epoch end. Must come before LastCheckpoint in the callbacks: a stop decided at an epoch end
    makes that epoch's last.ckpt the final one."""

    CHECK_EVERY = 10

    def __init__(self, signals):
        self.signals = signals  # trainwise.signals.RunSignals of this run
        self.stopped = False  # training stopped early because of a signal (on any rank, under DDP)

    @property
    def signal(self) -> int | None:
        return self.signals.received

    def on_train_start(self, trainer, pl_module):
        # Lightning installed its own SIGTERM handler just before this hook (it raises SystemExit at an epoch end,
        # and broadcasts from inside the handler under DDP); ours goes back on top. Lightning restores the handlers
        # from before fit at teardown, which are ours too.
        self.signals.training = True
        self.signals.install()

    def teardown(self, trainer, pl_module, stage):
        self.signals.training = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last = batch_idx + 1 >= trainer.num_training_batches
        if trainer.world_size > 1 and not (last or (batch_idx + 1) % self.CHECK_EVERY == 0):
            return
        if not self._decide(trainer):
            return
        if last:  # the epoch is whole: validate it and save it as the final one
            trainer.should_stop = True
            return
        raise Interrupted(self.signals.received or signal.SIGTERM)

    def on_train_epoch_end(self, trainer, pl_module):
        if self._decide(trainer):  # signalled during the epoch's validation
            trainer.should_stop = True

    def _decide(self, trainer) -> bool:
        stop = self.signals.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        self.stopped |= stop
        return stop


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar (used when stdout is a terminal), made cheaper for short steps.

    Lightning redraws it up to 100 times a second from a thread that competes with training for the CPU, and
    re-reads the metrics for its metrics column after every training batch. On 2 CPU cores that made small_cnn
    epochs about 22 % longer than with plain epoch lines (this bar: about 8 %). Here it is redrawn 10 times a
    second, and a batch only moves the bar: trainwise logs metrics per epoch, so the column is refreshed by
    Lightning at epoch ends (and reading logged values every batch would stall a GPU)."""

    def __init__(self):
        super().__init__(refresh_rate=10)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.is_disabled:  # every DDP rank but 0 (Lightning disables the bar there)
            return
        if self.train_progress_bar_id is None:  # resumed mid-epoch, as Lightning's version handles
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, batch_idx + 1)


class NoProfiler(PassThroughProfiler):
    """No profiling, cheaply. Lightning's default profiler does nothing either, but through a generator-based
    context manager entered around every hook of every callback (about 10 Python calls each: thousands per
    epoch, most of what a callback without per-step work costs); this one hands back one reusable null context."""

    _NULL = contextlib.nullcontext()

    def profile(self, action_name: str):
        return self._NULL
