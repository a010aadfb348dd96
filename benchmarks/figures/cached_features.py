"""cached_features_speedup: head-only fine-tuning, the backbone every step / cached features."""

from __future__ import annotations

import time
from pathlib import Path

from baselines import build_module, lightning_fit, net_and_data
from harness import compose, interleave


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
        net, datamodule = net_and_data(cfg, input_shape)
        frozen = freeze(net, "backbone")
        if cached:
            started = time.perf_counter()
            datamodule = cache_features(datamodule, net.encoder)
            caching.append(time.perf_counter() - started)
        module = build_module(cfg, net, datamodule, frozen, features_cached=cached)
        job = tmp / f"cache{next(counter)}"
        return lightning_fit(cfg, module, datamodule, job, max_epochs=epochs if not cached else 5)["epoch_s"]

    base, cand = interleave(reps, lambda: run(False), lambda: run(True))
    return {"speedup": base / cand, "uncached_epoch_s": base, "cached_epoch_s": cand, "caching_s": min(caching)}
