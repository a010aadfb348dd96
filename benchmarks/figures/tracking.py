"""tracking_overhead_ratio: trainwise's Trainer with MLflow tracking on / off."""

from __future__ import annotations

from pathlib import Path

from baselines import build_module, lightning_fit, net_and_data
from harness import compose, interleave


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
        net, datamodule = net_and_data(cfg)
        return lightning_fit(cfg, build_module(cfg, net, datamodule), datamodule, tmp / f"off{next(counter)}")

    def on():
        net, datamodule = net_and_data(cfg)
        with TrackedRun(store, experiment_id, "bench", {}) as tracked:
            return lightning_fit(
                cfg, build_module(cfg, net, datamodule), datamodule, tmp / f"on{next(counter)}", tracked
            )

    base, cand = interleave(reps, lambda: off()["epoch_s"], lambda: on()["epoch_s"])
    return {"ratio": cand / base, "off_epoch_s": base, "on_epoch_s": cand}
