"""framework_overhead_ratio: per-epoch time through trainwise / the hand-written loop, with its parts."""

from __future__ import annotations

import statistics
from pathlib import Path

from baselines import fabric_loop, hand_loop, net_and_data, plain_lightning, trainwise_recipe
from harness import compose, default_max_epochs


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
        net, datamodule = net_and_data(cfg)
        epochs = default_max_epochs(cfg, datamodule)
        epochs_used.append(epochs)
        on_gpu = device == "cuda"  # the plain GPU loop keeps the small data on the device, in bf16 autocast
        return hand_loop(net, cfg.optimizer, datamodule, epochs, device, on_gpu, on_gpu, count_calls)

    def lightning(count_calls: bool = False):
        net, datamodule = net_and_data(cfg)
        return plain_lightning(cfg, net, datamodule, tmp / f"lightning{next(counter)}", device, count_calls)

    def trainwise(count_calls: bool = False):
        return trainwise_recipe(tmp, f"job{next(counter)}", *overrides, count_calls=count_calls)

    def terminal(count_calls: bool = False):
        return trainwise_recipe(tmp, f"job{next(counter)}", *overrides, count_calls=count_calls, terminal=True)

    def fabric(count_calls: bool = False):
        net, datamodule = net_and_data(cfg)
        return fabric_loop(net, cfg.optimizer, datamodule, default_max_epochs(cfg, datamodule), count_calls)

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
