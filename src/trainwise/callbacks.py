"""The two small Lightning callbacks trainwise adds; Lightning has no equivalent of either."""

from __future__ import annotations

import pytorch_lightning as pl


class SampleCounter(pl.Callback):
    """Counts training images seen, for cost/samples_per_second (len() of a batch needs no device sync)."""

    def __init__(self):
        self.samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += len(batch[1])


class EpochLines(pl.Callback):
    """One plain line per epoch, for logs and CI where a progress bar would be noise (not a TTY)."""

    def on_train_epoch_end(self, trainer, pl_module):
        # Lightning validates before this hook, so the epoch's val metrics are ready here.
        shown = ("train/loss", "val/loss", "val/acc")
        values = "  ".join(
            f"{k} {float(trainer.callback_metrics[k]):.4f}" for k in shown if k in trainer.callback_metrics
        )
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {values}", flush=True)
