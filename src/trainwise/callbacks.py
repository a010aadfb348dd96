"""The small Lightning callbacks trainwise adds where Lightning has no equivalent."""

from __future__ import annotations

import functools
import time

import pytorch_lightning as pl
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar


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


class BestCheckpoint(EpochCheckpoint):
    """`best.ckpt`: the weights (only) of the epoch with the highest val/acc, what testing and a later fine-tune
    load. Lightning's ModelCheckpoint writes the file at every improvement; with short epochs that write cost more
    than the training (head-only fine-tuning of resnet18 on cached features on 2 CPU cores: ~0.17 s to pickle and
    write 45 MB of mostly frozen weights, against ~0.04 s of training per epoch). Here an improvement copies the
    weights to host memory, and the file is written when something needs it: before each `last.ckpt` (whose resume
    state names best.ckpt and its score), when training ends or stops, and when it fails."""

    def __init__(self, dirpath):
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor="val/acc",
            mode="max",
            auto_insert_metric_name=False,
            enable_version_counter=False,
            save_weights_only=True,
        )
        self._held: tuple[str, dict] | None = None  # (path, checkpoint) not written yet

    def _save_checkpoint(self, trainer, filepath):
        # Lightning's version: trainer.save_checkpoint(), i.e. dump_checkpoint() + write + barrier, then the
        # loggers' after_save_checkpoint (a no-op for trainwise's logger: the files are logged after fit). Every
        # rank dumps (a sharded strategy gathers the weights collectively); only rank 0 will write.
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=True)
        self._held = (filepath, apply_to_collection(checkpoint, torch.Tensor, _host_copy))
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
        self.write_held(trainer, wait_for_ranks=False)  # a failing rank may be alone here


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


class LastCheckpoint(EpochCheckpoint):
    """`last.ckpt`, the full training state that `resume` continues from, written at the end of an epoch: the
    first one, then once `every_s` seconds have passed since the previous write, and always at the last epoch or
    when training stops early (Ctrl+C). Lightning's `train_time_interval` would save mid-epoch, from where a run
    cannot resume exactly; saving every epoch cost short epochs more than the training itself (2 CPU cores).
    A hard crash loses at most `every_s` seconds of training."""

    def __init__(self, dirpath, every_s: float, best: BestCheckpoint):
        super().__init__(dirpath=dirpath, filename="last", enable_version_counter=False, save_on_train_epoch_end=True)
        self.every_s = every_s
        self.best = best  # runs earlier in the same hook (an earlier callback), so holds this epoch's improvement
        self._saved_at: float | None = None

    def on_train_epoch_end(self, trainer, pl_module):
        final = trainer.should_stop or trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        due = self._saved_at is None or time.monotonic() - self._saved_at >= self.every_s
        if final or due:
            self.best.write_held(trainer)  # a resume from this last.ckpt finds the best.ckpt it names
            super().on_train_epoch_end(trainer, pl_module)
            self._saved_at = time.monotonic()


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
    """SIGINT/SIGTERM during fit: finish the current batch and stop, so trainwise can log the last checkpoint and
    end the MLflow run KILLED (Lightning's own Ctrl+C handling exits the process from inside `fit`).
    A second Ctrl+C stops at once.

    Under DDP every rank must stop after the same batch, or the others wait forever in the next all-reduce: the
    ranks decide together (one rank signalled is enough) every CHECK_EVERY batches and at each epoch end."""

    CHECK_EVERY = 10

    def __init__(self):
        self.signal: int | None = None
        self.stopped = False  # training stopped early because of a signal (on any rank, under DDP)
        self._trainer = None
        self._previous: dict[int, object] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.world_size > 1 and (batch_idx + 1) % self.CHECK_EVERY == 0:
            self._decide_together(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.world_size > 1:
            self._decide_together(trainer)

    def _decide_together(self, trainer) -> None:
        if trainer.strategy.reduce_boolean_decision(self.signal is not None, all=False):
            trainer.should_stop = True
            self.stopped = True

    def on_train_start(self, trainer, pl_module):
        # Not on_fit_start: Lightning records every signal handler after that hook and restores them at teardown,
        # which would leave ours installed after fit.
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        self._trainer = trainer
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_fit_end(self, trainer, pl_module):
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer, pl_module, stage):
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        import signal

        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        print(
            f"\nReceived {signal.Signals(signum).name}: stopping after this batch (Ctrl+C again: at once).", flush=True
        )
        if self._trainer is not None and self._trainer.world_size == 1:
            self._trainer.should_stop = True
            self.stopped = True


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
