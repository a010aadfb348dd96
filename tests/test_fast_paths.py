"""The fast paths give what the slow ones give: head-only training on cached features ends at the same head as
running the frozen backbone every step, and batched on-device augmentation draws the same transforms as
torchvision's per-sample path. Everything runs on CPU in seconds."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy.stats import chi2_contingency

from helpers import Terminal, compose_config
from trainwise.data import build_datamodule
from trainwise.data.augment import apply_crop_flip, crop_flip, crop_flip_params, per_sample_transform
from trainwise.errors import UserError

SIZE, PAD = 8, 2


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    options |= dict(enable_model_summary=False, deterministic=True, default_root_dir=tmp_path)
    return pl.Trainer(accelerator="cpu", devices=1, **(options | kwargs))


def _module(cfg, net, num_classes: int, frozen=(), features_cached: bool = False):
    from trainwise.module import ClassificationModule
    from trainwise.strategies.freeze import param_groups

    groups = param_groups(net, cfg.optimizer.lr, 1.0)
    return ClassificationModule(
        net, num_classes, cfg.optimizer, cfg.scheduler, groups, list(frozen), {}, features_cached
    )


# ---------------------------------------------------------------- cached features


def test_cached_features_train_the_same_head_as_the_frozen_backbone(tmp_path):
    """Same seed, same initial weights, same batch order: the head trained on features cached once equals the head
    trained behind the frozen backbone (eval mode: its BatchNorm uses running statistics) run every step."""
    from trainwise.data.features import cache_features
    from trainwise.models import build_model
    from trainwise.strategies.freeze import freeze

    cfg = compose_config("model=timm", "model.name=test_resnet", "dataset=digits")  # timm's tiny resnet: BatchNorm
    datamodule = build_datamodule(cfg.dataset, cfg.seed, input_shape=(1, 16))
    pl.seed_everything(cfg.seed, verbose=False)
    net = build_model(cfg.model, datamodule.num_classes, 1, 16)
    initial_head = copy.deepcopy(net.head.state_dict())
    trained = {}
    for cached in (False, True):
        trial = copy.deepcopy(net)
        frozen = freeze(trial, "backbone")
        data = cache_features(datamodule, trial.backbone) if cached else datamodule
        module = _module(cfg, trial, datamodule.num_classes, frozen, features_cached=cached)
        _trainer(tmp_path, max_steps=8, limit_val_batches=0).fit(module, datamodule=data)
        trained[cached] = trial
    head, cached_head = trained[False].head.state_dict(), trained[True].head.state_dict()
    assert not torch.allclose(head["weight"], initial_head["weight"])  # it trained
    torch.testing.assert_close(cached_head, head, rtol=1e-4, atol=1e-5)
    # The frozen backbone, BatchNorm running statistics included, did not move on either path.
    torch.testing.assert_close(trained[False].backbone.state_dict(), net.backbone.state_dict(), rtol=0, atol=0)


def test_augmented_training_data_is_not_cached():
    from trainwise import strategies
    from trainwise.data.features import cache_features

    head_only = ("strategy=finetune", "strategy.freeze=backbone")
    assert strategies.caches_features(compose_config(*head_only))
    assert not strategies.caches_features(compose_config(*head_only, "dataset.augment=crop_flip"))
    augmented = build_datamodule(compose_config("dataset.augment=crop_flip").dataset, seed=0)
    with pytest.raises(ValueError, match="augmented"):
        cache_features(augmented, torch.nn.Identity())


# ---------------------------------------------------------------- batched augmentation


def _position_coded(n: int) -> torch.Tensor:
    """n copies of an image whose pixel values 1..SIZE*SIZE name their own position (0 is the padding)."""
    return (torch.arange(SIZE * SIZE, dtype=torch.float32) + 1).view(1, 1, SIZE, SIZE).expand(n, 1, -1, -1)


def _decode(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, flipped) of each crop of a position-coded image, read from the output: the first source pixel
    in raster order and its right-hand neighbour (PAD <= SIZE - 2 leaves every crop at least two columns wide)."""
    flat = out[:, 0].flatten(1)
    first = (flat > 0).float().argmax(1)
    i, j = first // SIZE, first % SIZE
    rows = torch.arange(len(out))
    here, right = flat[rows, first].long() - 1, out[rows, 0, i, j + 1].long() - 1
    x, y, flipped = here % SIZE, here // SIZE, (right % SIZE) < (here % SIZE)
    top = y + PAD - i
    left = torch.where(flipped, x + PAD - (SIZE - 1 - j), x + PAD - j)
    return top.numpy(), left.numpy(), flipped.numpy()


def test_batched_crop_flip_draws_the_transforms_torchvision_draws_per_sample():
    n = 4000
    batched = crop_flip(_position_coded(n), PAD, torch.Generator().manual_seed(1))
    transform = per_sample_transform(SIZE, PAD)
    torch.manual_seed(2)
    per_sample = torch.stack([transform(image) for image in _position_coded(n)])
    draws = {"batched": _decode(batched), "per_sample": _decode(per_sample)}
    offsets = 2 * PAD + 1
    for name, (top, left, flipped) in draws.items():
        # Each path on its own: offsets uniform on [0, 2*PAD], flips at 0.5 (a bug such as offsets only in
        # [0, PAD) or no flips is off by at least 0.2 here; sampling noise at n=4000 is about 0.01).
        for axis in (top, left):
            frequencies = np.bincount(axis, minlength=offsets) / n
            assert len(frequencies) == offsets and np.abs(frequencies - 1 / offsets).max() < 0.04, (name, frequencies)
        assert abs(flipped.mean() - 0.5) < 0.04, name
    # The joint distribution of (top, left, flip) is the same on both paths (chi-square, 50 cells, seeds fixed).
    cells = [np.bincount((t * offsets + lf) * 2 + f, minlength=offsets**2 * 2) for t, lf, f in draws.values()]
    assert chi2_contingency(np.stack(cells)).pvalue > 0.01


def test_batched_crop_flip_keeps_shape_dtype_device_and_values():
    from torchvision.transforms.v2 import functional as TF

    images = torch.rand(64, 3, SIZE, SIZE)
    top, left, flip = crop_flip_params(len(images), PAD, torch.Generator().manual_seed(0))
    out = apply_crop_flip(images, PAD, top, left, flip)
    assert (out.shape, out.dtype, out.device) == (images.shape, images.dtype, images.device)
    for k, image in enumerate(images):  # each image exactly as torchvision crops and flips it with those draws
        expected = TF.crop(TF.pad(image, [PAD]), int(top[k]), int(left[k]), SIZE, SIZE)
        torch.testing.assert_close(out[k], TF.horizontal_flip(expected) if flip[k] else expected, rtol=0, atol=0)
    assert 0 < flip.sum() < len(flip) and len(set(top.tolist())) == 2 * PAD + 1


# ---------------------------------------------------------------- the datamodule


class _Batches(pl.Callback):
    """The images each step received, by stage (after on_after_batch_transfer), with (epoch, batch index)."""

    def __init__(self):
        self.seen: dict[str, list] = {"train": [], "val": [], "test": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen["train"].append((trainer.current_epoch, batch_idx, batch[0].clone()))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.seen["val"].append((trainer.current_epoch, batch_idx, batch[0].clone()))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.seen["test"].append((0, batch_idx, batch[0].clone()))


def _batches_seen(tmp_path, augment: str) -> tuple[dict, object]:
    from trainwise.models import build_model

    cfg = compose_config("model=mlp", "dataset=digits", f"dataset.augment={augment}")
    datamodule = build_datamodule(cfg.dataset, cfg.seed)
    pl.seed_everything(cfg.seed, verbose=False)
    module = _module(cfg, build_model(cfg.model, datamodule.num_classes, 1, SIZE), datamodule.num_classes)
    record = _Batches()
    limits = dict(limit_train_batches=3, limit_val_batches=2, limit_test_batches=2)
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[record], **limits)
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return record.seen, datamodule


def test_the_datamodule_augments_training_batches_only_and_repeatably(tmp_path):
    plain, _ = _batches_seen(tmp_path / "none", "none")
    augmented, datamodule = _batches_seen(tmp_path / "crop_flip", "crop_flip")
    again, _ = _batches_seen(tmp_path / "again", "crop_flip")
    assert [len(plain[s]) for s in ("train", "val", "test")] == [6, 2 + 4, 2]  # sanity check + 2 epochs; test
    for stage in ("val", "test"):  # never augmented
        for (_, _, x), (_, _, y) in zip(plain[stage], augmented[stage], strict=True):
            assert torch.equal(x, y)
    for (epoch, idx, x), (_, _, y), (_, _, z) in zip(plain["train"], augmented["train"], again["train"], strict=True):
        assert not torch.equal(x, y)
        # The draw depends only on (seed, epoch, batch index): a rerun, or a resumed run, augments alike.
        assert torch.equal(y, datamodule.augment_batch(x, epoch, idx)) and torch.equal(y, z)


def test_device_resident_places_the_splits_on_the_device_and_checks_its_value():
    datamodule = build_datamodule(compose_config("dataset=digits", "dataset.device_resident=true").dataset, seed=0)
    datamodule.place_on(torch.device("cpu"))  # nothing to move on CPU
    assert datamodule.resident_device is None
    datamodule.place_on(torch.device("meta"))  # stands in for a GPU: batches come out of the device's memory
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.device.type == labels.device.type == "meta"
    auto = build_datamodule(compose_config("dataset=digits").dataset, seed=0)
    auto.place_on(torch.device("meta"))  # auto decides on CUDA only (it asks the free memory)
    assert auto.resident_device is None
    with pytest.raises(UserError, match="device_resident"):
        build_datamodule(compose_config("dataset=digits", "dataset.device_resident=maybe").dataset, seed=0)
    with pytest.raises(UserError, match="augment"):
        build_datamodule(compose_config("dataset=digits", "dataset.augment=mixup").dataset, seed=0)


def test_stage_metric_matches_torchmetrics_over_uneven_batches():
    """The module's one-metric-per-stage (kept lean for speed) reports what torchmetrics' mean loss weighted by
    batch size and micro accuracy report, including a short last batch."""
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy

    from trainwise.module import LossAndAccuracy

    generator = torch.Generator().manual_seed(0)
    fused, mean_loss, accuracy = LossAndAccuracy(), MeanMetric(), MulticlassAccuracy(5, average="micro")
    for size in (64, 64, 7):
        logits = torch.randn(size, 5, generator=generator)
        labels = torch.randint(0, 5, (size,), generator=generator)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        fused.update(loss, logits, labels)
        mean_loss.update(loss, weight=size)
        accuracy.update(logits, labels)
    values = fused.compute()
    assert values["loss"] == pytest.approx(float(mean_loss.compute()), rel=1e-6)
    assert values["acc"] == pytest.approx(float(accuracy.compute()), abs=1e-7)


def test_terminal_progress_bar_reaches_the_last_batch_and_shows_epoch_metrics(tmp_path, monkeypatch):
    """trainwise's lighter progress bar (10 redraws a second, no metric re-reads per batch) still moves to the
    last batch of every epoch and shows the epoch's logged values, in a terminal."""
    import contextlib

    from torch.utils.data import DataLoader, TensorDataset

    from trainwise.callbacks import ProgressBar

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val/acc", 0.25, prog_bar=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = TensorDataset(torch.randn(28, 4), torch.randint(0, 2, (28,)))
    screen = Terminal()
    with contextlib.redirect_stdout(screen):
        trainer = _trainer(tmp_path, max_epochs=2, enable_progress_bar=True, callbacks=[ProgressBar()])
        trainer.fit(Tiny(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=14))
    last_line = screen.getvalue().rsplit("\r", 1)[-1]
    assert "Epoch 1/1" in last_line and "7/7" in last_line and "val/acc: 0.250" in last_line

    # Lightning disables the bar on every DDP rank but 0 (in its setup); such a rank trains on, without a bar.
    quiet_rank_bar = ProgressBar()
    quiet_rank_bar.disable()
    with contextlib.redirect_stdout(Terminal()):
        trainer = _trainer(tmp_path, max_epochs=1, enable_progress_bar=True, callbacks=[quiet_rank_bar])
        trainer.fit(Tiny(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=14))
    assert trainer.global_step == 7


def test_epoch_metrics_reach_the_bar_callbacks_and_mlflow_as_self_log_would_and_not_from_the_sanity_check(
    tmp_path, store_uri
):
    """The module hands its epoch values to Lightning by hand (publish_epoch_metrics, cheaper than self.log):
    the terminal's bar shows the epoch's loss and accuracy, a user's callback finds them in callback_metrics,
    MLflow gets one point per epoch at the global step (none from the sanity check's two validation batches), and
    the test split's values end up on the run."""
    import contextlib

    from helpers import mlflow_client
    from trainwise.jobs import JobContext, run

    seen = []

    class Reader(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            seen.append((trainer.sanity_checking, sorted(trainer.callback_metrics)))

    cfg = compose_config("profile=smoke", f"tracking.uri={store_uri}", "trainer.max_epochs=2")
    screen = Terminal()
    with contextlib.redirect_stdout(screen):
        result = run(cfg, JobContext(job_dir=tmp_path / "job", callbacks=[Reader()]))
    # The sanity check ran and callbacks saw its values; Lightning then clears them. An epoch validates before
    # the module publishes its train values (on_train_epoch_end), so the first epoch's validation sees val/* only.
    assert seen == [
        (True, ["val/acc", "val/loss"]),
        (False, ["val/acc", "val/loss"]),
        (False, ["train/acc", "train/loss", "val/acc", "val/loss"]),
    ]
    epoch_2 = [line for line in screen.getvalue().split("\r") if "Epoch 1/1" in line][-1]  # the bar counts from 0
    assert "val/acc:" in epoch_2 and "train/loss:" in epoch_2, epoch_2
    client = mlflow_client(store_uri)
    for key in ("val/acc", "val/loss", "train/loss", "train/acc"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [4, 8], key
    run = client.get_run(result.run_id)
    local = json.loads((tmp_path / "job" / "metrics.json").read_text())  # what the recipe read back from the test
    for key in ("test/acc", "test/loss", "test/f1_macro", "test/acc_top5"):
        assert local[key] == run.data.metrics[key], key


# ---------------------------------------------------------------- best weights held in memory


class _ScriptedAccuracy(pl.LightningModule):
    """Logs a given val/acc per epoch; can fail at a given epoch's first training step."""

    def __init__(self, accuracies: list[float], fail_at_epoch: int | None = None):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.accuracies, self.fail_at_epoch = accuracies, fail_at_epoch

    def training_step(self, batch, batch_idx):
        if self.current_epoch == self.fail_at_epoch:
            raise FloatingPointError("diverged")
        return torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", self.accuracies[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _fit_with_checkpoints(tmp_path, module, every_s: float, watch=None) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from trainwise.callbacks import BestCheckpoint, LastCheckpoint

    best = BestCheckpoint(tmp_path)
    callbacks = [best, LastCheckpoint(tmp_path, every_s, best=best), *([watch] if watch else [])]
    data = TensorDataset(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 2)
    trainer = _trainer(tmp_path, max_epochs=len(module.accuracies), enable_checkpointing=True, callbacks=callbacks)
    trainer.fit(module, DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))


def _saved(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_best_checkpoint_holds_the_best_epochs_weights_and_is_on_disk_with_every_last_checkpoint(tmp_path):
    """best.ckpt is written late (the weights wait in memory) but holds the best epoch's weights, not later
    ones; and whenever last.ckpt is on disk, the best.ckpt on disk is the one it names, with the score it records
    (what a resume after a crash at that moment reads)."""

    # A Checkpoint subclass, so that Lightning runs it after the two checkpoints (it moves those last, in order):
    # at each epoch end it sees what a crash right then would leave on disk.
    class Watch(pl.callbacks.Checkpoint):
        def __init__(self):
            self.weights, self.on_disk = [], []

        def on_train_epoch_end(self, trainer, pl_module):
            self.weights.append({k: v.clone() for k, v in pl_module.state_dict().items()})
            last = _saved(tmp_path / "last.ckpt")
            best_state = next(v for k, v in last["callbacks"].items() if "val/acc" in k)
            score = round(float(best_state["best_model_score"]), 4)
            self.on_disk.append((_saved(tmp_path / "best.ckpt")["epoch"], score))

    watch = Watch()
    # every_s=3600: last.ckpt is written after the first epoch and the last one only
    _fit_with_checkpoints(tmp_path, _ScriptedAccuracy([0.2, 0.9, 0.5, 0.4]), every_s=3600, watch=watch)
    best = _saved(tmp_path / "best.ckpt")
    assert best["epoch"] == 1
    for name, value in watch.weights[1].items():
        assert torch.equal(best["state_dict"][name], value)
    assert not torch.equal(best["state_dict"]["layer.weight"], watch.weights[-1]["layer.weight"])
    assert watch.on_disk == [(0, 0.2), (0, 0.2), (0, 0.2), (1, 0.9)]


def test_best_checkpoint_is_written_when_training_fails(tmp_path):
    """Weights held in memory reach best.ckpt even when training then fails (last.ckpt not due)."""
    with pytest.raises(FloatingPointError):
        _fit_with_checkpoints(tmp_path, _ScriptedAccuracy([0.3, 0.6, 0.1], fail_at_epoch=2), every_s=3600)
    assert _saved(tmp_path / "best.ckpt")["epoch"] == 1
