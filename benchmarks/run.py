"""trainwise performance figures (`make bench`): measurements, not tests.

Every figure is a ratio against a baseline measured in the same process, repetitions interleaved
(baseline 1, candidate 1, baseline 2, ...), median taken, so it holds on a noisy shared machine.

    python benchmarks/run.py [--json FILE] [--quick] [--skip-demo] [--gpu]

Per-epoch time is the median, over the epochs after the first, of the wall time from the start of one training
epoch to the start of the next (the last epoch ends at `on_train_end`). That cycle holds the training batches,
the validation pass and whatever the framework does between them (checkpoint saving, metric logging, epoch lines),
so the framework is charged for all of it. The narrower window `on_train_epoch_start` -> `on_validation_epoch_end`
is kept as a detail key (`*_window_s`). The hand-written loops mark the same boundaries.

See benchmarks/README.md for what each key means and the figures measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# key -> (comparison, goal) on 2 CPU cores.
GOALS: dict[str, tuple[str, float]] = {
    "framework_overhead_ratio": ("<=", 1.05),
    "tracking_overhead_ratio": ("<=", 1.03),
    "cached_features_speedup": (">=", 10.0),
    "device_resident_speedup": (">=", 1.3),
    "cli_help_seconds": ("<=", 1.0),
    "cfg_job_seconds": ("<=", 1.0),
    "demo_seconds": ("<=", 120.0),
}

# The glyphs subset for device_resident_speedup on CPU: the full 62,000 images (num_per_class=1000) make the
# per-sample baseline take too long for a 6-minute `make bench` on 2 cores.
GLYPHS_PER_CLASS_CPU = 300


# ---------------------------------------------------------------------------------------------------------
# Timing helpers


def _sync() -> None:
    import torch

    if torch.cuda.is_initialized():  # not is_available(): on a CPU machine that asks NVML, ~0.4 ms a call
        torch.cuda.synchronize()


def _epoch_figures(starts: list[float], end: float, window_ends: list[float]) -> dict[str, float]:
    """Median cycle (start -> next start) and window (start -> validation end) over the epochs after the first."""
    cycles = [b - a for a, b in zip(starts, starts[1:] + [end], strict=True)]
    windows = [b - a for a, b in zip(starts, window_ends, strict=False)]
    later = slice(1, None) if len(cycles) > 1 else slice(None)
    return {
        "epoch_s": statistics.median(cycles[later]),
        "window_s": statistics.median(windows[later]) if windows else float("nan"),
        "epochs": len(cycles),
    }


class _CallCounter:
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


def _epoch_timer(count_calls: bool = False):
    import pytorch_lightning as pl

    class EpochTimer(pl.Callback):
        """Wall-clock marks at the start of each training epoch, the end of its validation, and the end of fit;
        with count_calls, the Python calls per epoch (profiled: the times of that run are not comparable)."""

        def __init__(self):
            self.starts: list[float] = []
            self.window_ends: list[float] = []
            self.end = 0.0
            self.calls = _CallCounter() if count_calls else None

        def on_train_epoch_start(self, trainer, pl_module):
            if self.calls:
                self.calls.epoch_started(trainer.current_epoch)
            _sync()
            self.starts.append(time.perf_counter())

        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                _sync()
                self.window_ends.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            _sync()
            self.end = time.perf_counter()
            if self.calls:
                self.calls.stopped()

        def figures(self) -> dict[str, float]:
            figures = _epoch_figures(self.starts, self.end, self.window_ends)
            if self.calls:
                figures["python_calls_per_epoch"] = self.calls.per_epoch()
            return figures

    return EpochTimer()


def _interleave(reps: int, baseline: Callable[[], float], candidate: Callable[[], float]) -> tuple[float, float]:
    """rep 1 baseline, rep 1 candidate, rep 2 baseline, ...; the median of each."""
    base, cand = [], []
    for _ in range(reps):
        base.append(baseline())
        cand.append(candidate())
    return statistics.median(base), statistics.median(cand)


class _Terminal(io.StringIO):
    """A swallowed stdout that says it is a terminal, as a user's shell is."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def _quiet(terminal: bool = False):
    """Swallow stdout (trainwise's epoch lines and run summary). stdout is then not a TTY, so trainwise uses its
    plain EpochLines callback, whatever terminal `make bench` runs in; terminal=True: trainwise sees a terminal
    and draws its progress bar, as for a user at a shell."""
    with contextlib.redirect_stdout(_Terminal() if terminal else io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def compose(*overrides: str):
    """The config `trainwise train <overrides>` would run (as tests/conftest.py composes it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from trainwise.app import register_experiments
    from trainwise.paths import conf_dir

    register_experiments()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def _max_epochs(cfg, datamodule) -> int:
    """What trainwise.train runs: trainer.max_epochs (tiny sets repeat within an epoch to reach min_train_steps;
    the digits-sized data here already has more steps per epoch than that)."""
    return cfg.trainer.max_epochs


# ---------------------------------------------------------------------------------------------------------
# The hand-written baseline loop


@contextlib.contextmanager
def _plain_pytorch_env():
    """The process environment of a script that never imported Lightning: Lightning's import sets
    PYTORCH_NVML_BASED_CUDA_CHECK=1, which on a machine without NVIDIA's driver makes every Adam step try to load
    NVML (see trainwise.accelerator.skip_nvml_without_driver); a plain PyTorch loop does not pay that."""
    from trainwise.accelerator import NVML_CHECK

    saved = os.environ.pop(NVML_CHECK, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[NVML_CHECK] = saved


def hand_loop(
    net,
    optimizer_cfg,
    datamodule,
    epochs: int,
    device: str = "cpu",
    bf16: bool = False,
    resident: bool = False,
    count_calls: bool = False,
) -> dict[str, float]:
    """Plain PyTorch doing the work trainwise does per epoch: shuffled batches sliced from the same tensors,
    forward, cross-entropy, backward, optimizer step, training loss/accuracy accumulated on the device; then a
    validation pass (eval mode, no_grad, loss and accuracy); one host sync per epoch to read the numbers."""
    with _plain_pytorch_env():
        return _hand_loop(net, optimizer_cfg, datamodule, epochs, device, bf16, resident, count_calls)


def fabric_loop(net, optimizer_cfg, datamodule, epochs: int, count_calls: bool = False) -> dict[str, float]:
    """The hand loop (CPU) with its model and optimizer set up by Lightning Fabric and its backward through
    `fabric.backward`: what Lightning's lighter loop API costs, a reference for running trainwise's loop on it."""
    from lightning_fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    with _plain_pytorch_env():
        return _hand_loop(net, optimizer_cfg, datamodule, epochs, "cpu", False, False, count_calls, fabric)


def _hand_loop(net, optimizer_cfg, datamodule, epochs, device, bf16, resident, count_calls, fabric=None):
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    net.to(device)
    optimizer = instantiate(optimizer_cfg)([p for p in net.parameters() if p.requires_grad])
    backward = torch.Tensor.backward
    if fabric is not None:
        net, optimizer = fabric.setup(net, optimizer)
        backward = fabric.backward
    images, labels = datamodule.data.images, datamodule.data.labels
    to = device if resident else "cpu"
    train_x, train_y = images[datamodule.train_idx].to(to), labels[datamodule.train_idx].to(to)
    val_x, val_y = images[datamodule.val_idx].to(to), labels[datamodule.val_idx].to(to)
    batch, seed = datamodule.batch_size, datamodule.seed
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else (lambda: contextlib.nullcontext())
    starts, window_ends = [], []
    calls = _CallCounter() if count_calls else None
    for epoch in range(epochs):
        if calls:
            calls.epoch_started(epoch)
        _sync()
        starts.append(time.perf_counter())
        net.train()
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for idx in torch.randperm(len(train_y), generator=generator).split(batch):
            x, y = train_x[idx].to(device, non_blocking=True), train_y[idx].to(device, non_blocking=True)
            with autocast():
                logits = net(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            backward(loss)
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
        net.eval()
        val_loss = torch.zeros((), device=device)
        val_correct = torch.zeros((), dtype=torch.int64, device=device)
        with torch.no_grad(), autocast():
            for idx in torch.arange(len(val_y)).split(batch):
                x, y = val_x[idx].to(device, non_blocking=True), val_y[idx].to(device, non_blocking=True)
                logits = net(x)
                val_loss += F.cross_entropy(logits, y) * len(y)
                val_correct += (logits.argmax(1) == y).sum()
        _ = (float(loss_sum), int(correct), float(val_loss), int(val_correct))  # the epoch-end reduction
        window_ends.append(time.perf_counter())
    _sync()
    figures = _epoch_figures(starts, time.perf_counter(), window_ends)
    if calls:
        calls.stopped()
        figures["python_calls_per_epoch"] = calls.per_epoch()
    return figures


# ---------------------------------------------------------------------------------------------------------
# trainwise paths


def _net_and_data(cfg, input_shape=None):
    import pytorch_lightning as pl

    from trainwise.data import build_datamodule
    from trainwise.models import build_model

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.dataset, cfg.seed, input_shape)
    channels, size = datamodule.input_shape
    return build_model(cfg.model, datamodule.num_classes, channels, size), datamodule


def _module(cfg, net, datamodule, frozen=(), features_cached: bool = False):
    from trainwise import strategies
    from trainwise.module import ClassificationModule
    from trainwise.strategies.freeze import param_groups

    groups = param_groups(net, cfg.optimizer.lr, strategies.backbone_lr_mult(cfg))
    return ClassificationModule(
        net, datamodule.num_classes, cfg.optimizer, cfg.scheduler, groups, list(frozen), {}, features_cached
    )


def trainwise_recipe(
    tmp: Path, name: str, *overrides: str, count_calls: bool = False, terminal: bool = False
) -> dict[str, float]:
    """One `trainwise train <overrides>` run in-process, exactly as the Hydra task runs it (tracking into a
    temporary SQLite store, checkpoints, test, artifacts). The recipe is the thing users run, so the framework
    figure goes through it; only the epoch timer callback is added to its Trainer. terminal=True: stdout is a
    terminal, so the run draws its progress bar (in the other runs it prints a line per epoch)."""
    from trainwise.jobs import JobContext, run

    cfg = compose(f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", *overrides)
    timer = _epoch_timer(count_calls)
    with _quiet(terminal):
        run(cfg, JobContext(job_dir=tmp / name, overrides=list(overrides), callbacks=[timer]))
    return timer.figures()


def lightning_fit(cfg, module, datamodule, job_dir: Path, tracked=None, max_epochs: int | None = None):
    """Fit with the Trainer trainwise builds (`trainwise.trainer.build_trainer`: same callbacks, precision, trainer
    keys). tracked=None: the same Trainer with logger=False instead of the RunLogger."""
    from omegaconf import OmegaConf

    from trainwise.tracking.run import RunLogger
    from trainwise.trainer import build_trainer

    with _quiet():
        cfg = cfg.copy()
        OmegaConf.set_struct(cfg, False)
        cfg.trainer.max_epochs = max_epochs or _max_epochs(cfg, datamodule)
        trainer, *_ = build_trainer(cfg, RunLogger(tracked) if tracked is not None else False, job_dir)
    timer = _epoch_timer()
    trainer.callbacks.append(timer)
    with _quiet():
        trainer.fit(module, datamodule=datamodule)
    return timer.figures()


# ---------------------------------------------------------------------------------------------------------
# The figures


def plain_lightning(
    cfg, net, datamodule, job_dir: Path, device: str = "cpu", count_calls: bool = False
) -> dict[str, float]:
    """The hand loop's step as the smallest LightningModule, fitted by a bare Trainer (no logger, checkpoints,
    progress bar or callbacks but the epoch timer): what Lightning's loop itself costs over the hand loop."""
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    class PlainStep(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("loss_sum", torch.zeros(()))
            self.register_buffer("correct", torch.zeros((), dtype=torch.int64))

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
            self.loss_sum.add_(loss.detach() * len(y))
            self.correct.add_((logits.detach().argmax(1) == y).sum())
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            self.loss_sum.add_(F.cross_entropy(logits, y) * len(y))
            self.correct.add_((logits.argmax(1) == y).sum())

        def on_validation_epoch_end(self):
            _ = (float(self.loss_sum), int(self.correct))  # the epoch-end reduction, as the hand loop does
            self.loss_sum.zero_()
            self.correct.zero_()

        def configure_optimizers(self):
            return instantiate(cfg.optimizer)(self.parameters())

    from trainwise.accelerator import skip_nvml_without_driver

    # As trainwise's Trainer does: otherwise only the first repetition (before any trainwise run removed the
    # variable from this process) would pay the per-step NVML probe, and the split would mix that cost in.
    skip_nvml_without_driver()
    timer = _epoch_timer(count_calls)
    on_gpu = device == "cuda"
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # trainwise's runs set it to WARNING
    trainer = pl.Trainer(
        accelerator="gpu" if on_gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if on_gpu else "32-true",
        max_epochs=_max_epochs(cfg, datamodule),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
        default_root_dir=str(job_dir),
    )
    with _quiet():
        trainer.fit(PlainStep(), datamodule=datamodule)
    return timer.figures()


def framework_overhead(
    tmp: Path,
    reps: int,
    quick: bool,
    overrides: tuple[str, ...] = ("model=small_cnn", "dataset=digits"),
    device="cpu",
    references: bool = True,
):
    """trainwise (the real recipe, tracking on, defaults as shipped) vs the hand loop: small_cnn on digits.
    Also the same step in a bare Lightning Trainer, which splits the ratio into what Lightning's loop costs
    (`lightning_floor`) and what trainwise adds on top of it (`over_lightning`). references=True adds two more:
    the recipe with stdout a terminal (`terminal`: the progress bar a user at a shell sees instead of the epoch
    lines of logs and CI), and the hand loop through Lightning Fabric (`fabric_floor`, CPU only)."""
    if quick:
        overrides += ("trainer.max_epochs=4", "min_train_steps=0")
    cfg = compose(*overrides)
    counter = iter(range(1000))
    epochs_used = []

    def hand(count_calls: bool = False):
        net, datamodule = _net_and_data(cfg)
        epochs = _max_epochs(cfg, datamodule)
        epochs_used.append(epochs)
        on_gpu = device == "cuda"  # the plain GPU loop keeps the small data on the device, in bf16 autocast
        return hand_loop(net, cfg.optimizer, datamodule, epochs, device, on_gpu, on_gpu, count_calls)

    def lightning(count_calls: bool = False):
        net, datamodule = _net_and_data(cfg)
        return plain_lightning(cfg, net, datamodule, tmp / f"lightning{next(counter)}", device, count_calls)

    def trainwise(count_calls: bool = False):
        return trainwise_recipe(tmp, f"job{next(counter)}", *overrides, count_calls=count_calls)

    def terminal(count_calls: bool = False):
        return trainwise_recipe(tmp, f"job{next(counter)}", *overrides, count_calls=count_calls, terminal=True)

    def fabric(count_calls: bool = False):
        net, datamodule = _net_and_data(cfg)
        return fabric_loop(net, cfg.optimizer, datamodule, _max_epochs(cfg, datamodule), count_calls)

    variants = {"hand": hand, "lightning": lightning, "trainwise": trainwise}
    if references:
        variants |= {"terminal": terminal, "fabric": fabric}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(reps):  # interleaved: hand 1, lightning 1, trainwise 1, ..., hand 2, ...
        for name, fit in variants.items():
            runs[name].append(fit())
    epoch = {name: statistics.median(r["epoch_s"] for r in done) for name, done in runs.items()}
    figures = {
        "ratio": epoch["trainwise"] / epoch["hand"],
        "lightning_floor_ratio": epoch["lightning"] / epoch["hand"],
        "over_lightning_ratio": epoch["trainwise"] / epoch["lightning"],
    }
    if references:
        figures["terminal_ratio"] = epoch["terminal"] / epoch["hand"]
        figures["fabric_floor_ratio"] = epoch["fabric"] / epoch["hand"]
    figures |= {f"{name}_epoch_s": seconds for name, seconds in epoch.items()}
    for name in ("hand", "trainwise"):
        figures[f"{name}_window_s"] = statistics.median(r["window_s"] for r in runs[name])
    figures["epochs"] = epochs_used[0]
    # One more run of each, profiled: Python calls per epoch, the work around the maths that noise does not change.
    figures |= {f"{name}_python_calls_per_epoch": fit(True)["python_calls_per_epoch"] for name, fit in variants.items()}
    return figures


def tracking_overhead(tmp: Path, reps: int, quick: bool) -> dict[str, float]:
    """The same trainwise Trainer with the RunLogger bound to a real run (temporary SQLite store) vs logger=False."""
    from trainwise.tracking import open_store
    from trainwise.tracking.run import TrackedRun

    overrides = ["model=small_cnn", "dataset=digits", f"tracking.uri=sqlite:///{tmp / 'tracking.db'}"]
    if quick:
        overrides += ["trainer.max_epochs=4", "min_train_steps=0"]
    cfg = compose(*overrides)
    store = open_store(cfg.tracking.uri)
    experiment_id = store.experiment_id("bench-tracking")
    counter = iter(range(1000))

    def off():
        net, datamodule = _net_and_data(cfg)
        return lightning_fit(cfg, _module(cfg, net, datamodule), datamodule, tmp / f"off{next(counter)}")

    def on():
        net, datamodule = _net_and_data(cfg)
        with TrackedRun(store, experiment_id, "bench", {}) as tracked:
            return lightning_fit(cfg, _module(cfg, net, datamodule), datamodule, tmp / f"on{next(counter)}", tracked)

    base, cand = _interleave(reps, lambda: off()["epoch_s"], lambda: on()["epoch_s"])
    return {"ratio": cand / base, "off_epoch_s": base, "on_epoch_s": cand}


def cached_features(
    tmp: Path, reps: int, quick: bool, model: str = "resnet18", input_shape=(3, 32)
) -> dict[str, float]:
    """Head-only fine-tuning (frozen backbone) through trainwise's module and Trainer: the backbone run on every
    step vs trained on features cached once by trainwise.data.features.cache_features."""
    from trainwise.data.features import cache_features
    from trainwise.strategies.freeze import freeze

    cfg = compose("model=timm", f"model.name={model}", "dataset=digits")
    epochs = 2 if quick else 3
    counter = iter(range(1000))
    caching = []

    def run(cached: bool) -> float:
        net, datamodule = _net_and_data(cfg, input_shape)
        frozen = freeze(net, "backbone")
        if cached:
            started = time.perf_counter()
            datamodule = cache_features(datamodule, net.backbone)
            caching.append(time.perf_counter() - started)
        module = _module(cfg, net, datamodule, frozen, features_cached=cached)
        job = tmp / f"cache{next(counter)}"
        return lightning_fit(cfg, module, datamodule, job, max_epochs=epochs if not cached else 5)["epoch_s"]

    base, cand = _interleave(reps, lambda: run(False), lambda: run(True))
    return {"speedup": base / cand, "uncached_epoch_s": base, "cached_epoch_s": cand, "caching_s": min(caching)}


def device_resident(
    reps: int, quick: bool, per_class: int = GLYPHS_PER_CLASS_CPU, device: str = "cpu"
) -> dict[str, float]:
    """Training with crop/flip augmentation (glyphs' shipped `augment_pad`), the same small_cnn trained by the same
    plain loop, fed two ways:
    baseline: a per-sample DataLoader (a Dataset applying torchvision's v2.RandomCrop(padding) +
    v2.RandomHorizontalFlip to one image per __getitem__, RandomSampler, default collate, 0 workers), each batch
    then copied to `device`;
    candidate: trainwise's TensorDataModule with `dataset.augment=crop_flip`: split tensors placed on `device` once
    (`place_on`, what its setup() does under a Trainer), whole batches indexed at once, crop/flip drawn for the
    whole batch on the device (`augment_batch`, what its on_after_batch_transfer hook does)."""
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader, Dataset, RandomSampler

    from trainwise.data.augment import per_sample_transform

    cfg = compose(
        "model=small_cnn", "dataset=glyphs", f"dataset.num_per_class={per_class}", "dataset.augment=crop_flip"
    )
    net, datamodule = _net_and_data(cfg)
    net.to(device)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    idx = torch.from_numpy(datamodule.train_idx)
    images, labels = datamodule.data.images[idx], datamodule.data.labels[idx]
    transform = per_sample_transform(int(images.shape[-1]), int(cfg.dataset.augment_pad))

    class PerSample(Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int):
            return transform(images[i]), labels[i]

    per_sample = DataLoader(PerSample(), batch_size=datamodule.batch_size, sampler=RandomSampler(PerSample()))
    datamodule.place_on(torch.device(device))
    batched = datamodule.train_dataloader()
    epochs = 2 if quick else 3

    def batches(loader, epoch: int):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for step, (x, y) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # no-op when resident
            if loader is batched:
                x = datamodule.augment_batch(x, epoch, step)
            yield x, y

    def epochs_through(loader) -> float:
        starts = []
        for epoch in range(epochs):
            _sync()
            starts.append(time.perf_counter())
            for x, y in batches(loader, epoch):
                loss = F.cross_entropy(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        _sync()
        return _epoch_figures(starts, time.perf_counter(), [])["epoch_s"]

    def pipeline_only(loader) -> float:
        _sync()
        started = time.perf_counter()
        for _ in batches(loader, 0):
            pass
        _sync()
        return time.perf_counter() - started

    base, cand = _interleave(reps, lambda: epochs_through(per_sample), lambda: epochs_through(batched))
    # Detail: the input pipeline alone (one epoch of augmented batches on the device, no model).
    pipe_base, pipe_cand = _interleave(max(reps, 3), lambda: pipeline_only(per_sample), lambda: pipeline_only(batched))
    return {
        "speedup": base / cand,
        "per_sample_epoch_s": base,
        "batched_epoch_s": cand,
        "pipeline_only_per_sample_s": pipe_base,
        "pipeline_only_batched_s": pipe_cand,
        "pipeline_only_speedup": pipe_base / pipe_cand,
        "train_images": len(idx),
        "glyphs_num_per_class": per_class,
        "augment_pad": int(cfg.dataset.augment_pad),
        "resident": datamodule.resident_device is not None,
    }


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def cli_seconds(tmp: Path) -> dict[str, float]:
    """Wall time of `trainwise --help` and `trainwise train --cfg job` (subprocesses, median of 3)."""
    exe = str(BIN / "trainwise")

    def wall(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run([exe, *args], cwd=tmp, env=_env(), check=True, capture_output=True)
        return time.perf_counter() - started

    return {
        "help": statistics.median(wall("--help") for _ in range(3)),
        "cfg_job": statistics.median(wall("train", "--cfg", "job") for _ in range(3)),
    }


def glyphs_cached() -> bool:
    from trainwise.paths import cache_dir

    return any((cache_dir() / "glyphs").glob("glyphs_*_n1000_s0_px8.npz"))


def demo_seconds(tmp: Path) -> dict[str, float]:
    """`trainwise train experiment=compare` end to end in an empty folder (its own mlflow.db there)."""
    folder = tmp / "demo"
    folder.mkdir()
    warm = glyphs_cached()
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "trainwise"), "train", "experiment=compare"], cwd=folder, env=_env(), capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    return {"seconds": seconds, "glyphs_cache_warm": warm, "exit_code": done.returncode}


# ---------------------------------------------------------------------------------------------------------
# GPU (cannot run on the 2-core CPU machine; guarded by torch.cuda.is_available())


def gpu_figures(tmp: Path, reps: int, quick: bool) -> dict[str, float]:
    """On CUDA: resnet18 at 32x32, bf16 (trainwise recipe vs a plain bf16-autocast loop on device-resident
    tensors); head-only resnet50 at 224x224, cached features vs the backbone every step; device_resident on the
    GPU (all 62,000 glyphs, fp32)."""
    import torch

    if not torch.cuda.is_available():
        print("--gpu: no CUDA device here; skipped", file=sys.stderr)
        return {}
    out: dict[str, float] = {"gpu_name": torch.cuda.get_device_name()}  # type: ignore[dict-item]
    overrides = ("model=resnet18", "dataset=glyphs", "dataset.image_size=32", "accelerator=gpu")
    overrides += ("trainer.max_epochs=5", "min_train_steps=0")  # 62,000 images an epoch: 5 epochs are plenty
    if quick:
        overrides += ("dataset.num_per_class=100",)
    framework = framework_overhead(tmp, reps, quick, overrides, device="cuda", references=False)  # device time
    out.update({f"gpu_resnet18_bf16_{k}": v for k, v in framework.items()})
    out["gpu_framework_overhead_ratio"] = framework["ratio"]
    cached = cached_features(tmp, reps, quick, model="resnet50", input_shape=(3, 224))
    out.update({f"gpu_resnet50_224_{k}": v for k, v in cached.items()})
    out["gpu_cached_features_speedup"] = cached["speedup"]
    resident = device_resident(reps, quick, per_class=GLYPHS_PER_CLASS_CPU if quick else 1000, device="cuda")
    out.update({f"gpu_device_resident_{k}": v for k, v in resident.items()})
    out["gpu_device_resident_speedup"] = resident["speedup"]
    return out


# ---------------------------------------------------------------------------------------------------------


def _met(key: str, value: float) -> bool:
    op, goal = GOALS[key]
    return value <= goal if op == "<=" else value >= goal


def _show(results: dict[str, object], notes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="trainwise benchmarks")
    for column in ("key", "value", "goal", "met?"):
        table.add_column(column)
    for key, (op, goal) in GOALS.items():
        if key not in results:
            table.add_row(key, "skipped", f"{op} {goal:g}", "-")
            continue
        value = float(results[key])  # type: ignore[arg-type]
        met = _met(key, value)
        table.add_row(key, f"{value:.3f}", f"{op} {goal:g}", "[green]yes[/]" if met else "[red]no[/]")
    console = Console()
    console.print(table)
    for note in notes:
        console.print(f"  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures as one flat JSON object")
    parser.add_argument("--quick", action="store_true", help="1 repetition, fewer epochs (while developing)")
    parser.add_argument("--skip-demo", action="store_true", help="leave out demo_seconds (the longest part)")
    parser.add_argument("--gpu", action="store_true", help="also measure on CUDA (resnet18 bf16, resnet50 cached)")
    args = parser.parse_args(argv)

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # it would win over the temporary stores
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import torch

    reps = 1 if args.quick else 3
    results: dict[str, object] = {
        "reps": reps,
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "glyphs_cache_warm_at_start": glyphs_cached(),
    }
    notes: list[str] = []
    started = time.perf_counter()

    def step(name: str, fn):
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        value = fn()
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        return value

    with tempfile.TemporaryDirectory(prefix="trainwise-bench-") as folder:
        tmp = Path(folder)
        cli = step("cli", lambda: cli_seconds(tmp))
        results["cli_help_seconds"], results["cfg_job_seconds"] = cli["help"], cli["cfg_job"]

        # 7 repetitions (not 3): on a shared 2-core machine the 15-epoch runs drift by +-20 % between repetitions
        framework_reps = reps if args.quick else max(reps, 7)
        fw = step("framework_overhead", lambda: framework_overhead(tmp, framework_reps, args.quick))
        results["framework_overhead_ratio"] = fw.pop("ratio")
        results.update({f"framework_{k}": v for k, v in fw.items()}, framework_reps=framework_reps)
        notes.append(
            f"framework_overhead_ratio {results['framework_overhead_ratio']:.2f} = Lightning's loop "
            f"{fw['lightning_floor_ratio']:.2f} (the same step in a bare Trainer / the hand loop) x trainwise on top "
            f"{fw['over_lightning_ratio']:.2f} (trainwise / the bare Trainer); Python calls per epoch: hand loop "
            f"{fw['hand_python_calls_per_epoch']:,.0f}, bare Trainer {fw['lightning_python_calls_per_epoch']:,.0f}, "
            f"trainwise {fw['trainwise_python_calls_per_epoch']:,.0f}; in a terminal (progress bar) "
            f"{fw['terminal_ratio']:.2f} x the hand loop, {fw['terminal_python_calls_per_epoch']:,.0f} calls per "
            f"epoch; the hand loop through Lightning Fabric {fw['fabric_floor_ratio']:.2f} x, "
            f"{fw['fabric_python_calls_per_epoch']:,.0f} calls per epoch"
        )

        tr = step("tracking_overhead", lambda: tracking_overhead(tmp, reps, args.quick))
        results["tracking_overhead_ratio"] = tr.pop("ratio")
        results.update({f"tracking_{k}": v for k, v in tr.items()})

        cf = step("cached_features", lambda: cached_features(tmp, reps, args.quick))
        results["cached_features_speedup"] = cf.pop("speedup")
        results.update({f"cached_resnet18_32_{k}": v for k, v in cf.items()})

        dr = step("device_resident", lambda: device_resident(reps, args.quick))
        results["device_resident_speedup"] = dr.pop("speedup")
        results.update({f"device_resident_{k}": v for k, v in dr.items()})
        notes.append(
            f"device_resident_speedup: crop/flip (pad {dr['augment_pad']}), glyphs subset, "
            f"num_per_class={GLYPHS_PER_CLASS_CPU} ({dr['train_images']} training images), not the full 62,000"
        )

        if not args.skip_demo:
            demo = step("demo", lambda: demo_seconds(tmp))
            results["demo_seconds"] = demo["seconds"]
            results["demo_glyphs_cache_warm"] = demo["glyphs_cache_warm"]
            results["demo_exit_code"] = demo["exit_code"]
            notes.append(f"demo_seconds: glyphs cache {'warm' if demo['glyphs_cache_warm'] else 'cold (generated)'}")

        if args.gpu:
            results.update(step("gpu", lambda: gpu_figures(tmp, reps, args.quick)))

    results["bench_seconds"] = time.perf_counter() - started
    _show(results, notes)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
