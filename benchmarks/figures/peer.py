"""peer_lht_ratio: trainwise's per-epoch time / the same model and data run the way lightning-hydra-template
(ashleve/lightning-hydra-template, v2.x: src/models/mnist_module.py, configs/callbacks/default.yaml,
configs/logger/mlflow.yaml) builds a run.

The peer, as the template does it:
- a LightningModule with torchmetrics objects per stage (MeanMetric for the loss, Accuracy for the accuracy,
  MaxMetric for the best validation accuracy), each updated every step and logged with `self.log(metric_object,
  on_step=False, on_epoch=True, prog_bar=True)`; `val/acc_best` logged at each validation epoch end;
- the template's default callbacks: ModelCheckpoint (monitor val/acc, mode max, save_last=True), EarlyStopping
  (val/acc, patience 100), RichModelSummary (max_depth -1) and RichProgressBar;
- MLFlowLogger into a SQLite store (the template's mlflow logger config, pointed at a temporary store as trainwise
  is);
- the data through a DataLoader over a Dataset of samples (per-sample collation, shuffle=True, 0 workers, as the
  template's MNISTDataModule builds its loaders), the same digits splits and batch size trainwise uses.

Same network (trainwise's small_cnn Net), same optimizer (Adam, the config's lr), same epochs, fp32 on CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

from baselines import net_and_data, trainwise_recipe
from harness import compose, default_max_epochs, epoch_timer, interleave, quiet


def lht_run(cfg, tmp: Path, name: str, count_calls: bool = False) -> dict[str, float]:
    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichModelSummary, RichProgressBar
    from pytorch_lightning.loggers import MLFlowLogger
    from torch.utils.data import DataLoader, TensorDataset
    from torchmetrics import MaxMetric, MeanMetric
    from torchmetrics.classification import Accuracy

    net, datamodule = net_and_data(cfg)
    classes = datamodule.num_classes

    class LitModule(pl.LightningModule):  # the template's MNISTLitModule, its net and optimizer ours
        def __init__(self):
            super().__init__()
            self.net = net
            self.criterion = torch.nn.CrossEntropyLoss()
            self.train_acc = Accuracy(task="multiclass", num_classes=classes)
            self.val_acc = Accuracy(task="multiclass", num_classes=classes)
            self.test_acc = Accuracy(task="multiclass", num_classes=classes)
            self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
            self.val_acc_best = MaxMetric()

        def forward(self, x):
            return self.net(x)

        def on_train_start(self):
            self.val_loss.reset()
            self.val_acc.reset()
            self.val_acc_best.reset()

        def model_step(self, batch):
            x, y = batch
            logits = self.forward(x)
            loss = self.criterion(logits, y)
            return loss, torch.argmax(logits, dim=1), y

        def training_step(self, batch, batch_idx):
            loss, preds, targets = self.model_step(batch)
            self.train_loss(loss)
            self.train_acc(preds, targets)
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            loss, preds, targets = self.model_step(batch)
            self.val_loss(loss)
            self.val_acc(preds, targets)
            self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

        def on_validation_epoch_end(self):
            self.val_acc_best(self.val_acc.compute())
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

        def configure_optimizers(self):
            return {"optimizer": instantiate(cfg.optimizer)(params=self.trainer.model.parameters())}

    def loader(indices, shuffle: bool):
        images, labels = datamodule.data.images, datamodule.data.labels
        idx = torch.from_numpy(indices)
        dataset = TensorDataset(images[idx].float() / (255.0 if images.dtype == torch.uint8 else 1.0), labels[idx])
        return DataLoader(dataset, batch_size=datamodule.batch_size, shuffle=shuffle, num_workers=0)

    timer = epoch_timer(count_calls)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    folder = tmp / name
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=default_max_epochs(cfg, datamodule), deterministic=False,
        default_root_dir=str(folder),
        callbacks=[
            ModelCheckpoint(dirpath=str(folder / "checkpoints"), monitor="val/acc", mode="max", save_last=True,
                            filename="epoch_{epoch:03d}", auto_insert_metric_name=False),
            EarlyStopping(monitor="val/acc", patience=100, mode="max"),
            RichModelSummary(max_depth=-1),
            RichProgressBar(),
            timer,
        ],
        logger=MLFlowLogger(experiment_name="lht", tracking_uri=f"sqlite:///{tmp / 'lht.db'}", run_name=name),
    )  # fmt: skip
    with quiet():
        trainer.fit(LitModule(), loader(datamodule.train_idx, True), loader(datamodule.val_idx, False))
    return timer.figures()


def peer_lht(tmp: Path, reps: int, quick: bool) -> dict[str, float]:
    """Interleaved: the template's way, then trainwise's recipe, per repetition; medians of per-epoch time."""
    overrides = ("model=small_cnn", "dataset=digits")
    if quick:
        overrides += ("trainer.max_epochs=4", "min_train_steps=0")
    cfg = compose(*overrides)
    counter = iter(range(1000))
    lht, ours = interleave(
        reps,
        lambda: lht_run(cfg, tmp, f"lht{next(counter)}")["epoch_s"],
        lambda: trainwise_recipe(tmp, f"peer_job{next(counter)}", *overrides)["epoch_s"],
    )
    calls = {
        "lht_python_calls_per_epoch": lht_run(cfg, tmp, "lht_calls", count_calls=True)["python_calls_per_epoch"],
        "trainwise_python_calls_per_epoch": trainwise_recipe(tmp, "peer_calls", *overrides, count_calls=True)[
            "python_calls_per_epoch"
        ],
    }
    return {"ratio": ours / lht, "lht_epoch_s": lht, "trainwise_epoch_s": ours, **calls}
