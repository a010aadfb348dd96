"""The accelerator group's speed switches: channels_last and torch.compile change how the network runs, never
what it computes or what its checkpoints hold."""

from __future__ import annotations

import ctypes
import os
import resource
import time
from dataclasses import replace

import pytest
import torch

from helpers import compose_config, run_job
from trainwise.accelerator import NVML_CHECK, PeakMemory
from trainwise.config import validate
from trainwise.errors import UserError
from trainwise.trainer import build_trainer


def _nvml_loadable() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def _checkpoint_keys(result_dir) -> set[str]:
    checkpoint = torch.load(result_dir / "job" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    return set(checkpoint["state_dict"])


def test_channels_last_trains_and_checkpoints_keep_their_keys(tmp_path, store_uri):
    plain = run_job(tmp_path / "plain", store_uri, "accelerator=cpu", "accelerator.channels_last=false")
    nhwc = run_job(tmp_path / "nhwc", store_uri, "accelerator=cpu", "accelerator.channels_last=true")
    assert _checkpoint_keys(tmp_path / "nhwc") == _checkpoint_keys(tmp_path / "plain")
    # Same seed, same data order, same maths in another memory layout.
    assert nhwc.metrics["test/acc"] == pytest.approx(plain.metrics["test/acc"], abs=0.02)


@pytest.mark.slow
def test_compiled_network_trains_and_checkpoints_keep_their_keys(tmp_path, store_uri):
    run_job(tmp_path / "plain", store_uri, "accelerator=cpu")
    compiled = run_job(tmp_path / "compiled", store_uri, "accelerator=cpu", "accelerator.compile=true")
    assert compiled.metrics["test/acc"] > 0
    assert _checkpoint_keys(tmp_path / "compiled") == _checkpoint_keys(tmp_path / "plain")  # no _orig_mod. prefix


@pytest.mark.parametrize(
    "override, says",
    [("accelerator.channels_last=sometimes", "channels_last"), ("accelerator.compile=fast", "accelerator.compile")],
)
def test_bad_speed_switches_are_named(override, says):
    with pytest.raises(UserError, match=says):
        validate(compose_config(override))


@pytest.mark.skipif(_nvml_loadable(), reason="NVIDIA's NVML library is here: Lightning's NVML-based check is kept")
def test_cpu_training_stops_looking_for_nvml_at_every_optimizer_step(tmp_path, monkeypatch):
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import. Without the driver, torch then tries to load NVML at
    every Adam step (~0.3 ms a step on 2 cores); trainwise's Trainer leaves the variable out where NVML is missing."""
    original, loads = ctypes.CDLL, []
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: loads.append(name) or original(name, *a, **k))
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight])

    def step() -> None:
        weight.grad = torch.ones(3)
        optimizer.step()

    monkeypatch.setenv(NVML_CHECK, "1")
    step()
    assert "libnvidia-ml.so.1" in loads  # what every step costs while the variable is set
    build_trainer(compose_config("accelerator=cpu"), False, tmp_path)
    assert NVML_CHECK not in os.environ
    loads.clear()
    step()
    assert loads == []
    assert torch.cuda.is_available() is False  # the same answer without the variable


def test_peak_memory_is_each_blocks_own_not_the_processs_lifetime_peak():
    """An in-process sweep trains the foundation first: a later run must not report the foundation's peak."""
    big_mb = 300
    with PeakMemory(compose_config("accelerator=cpu").accelerator) as first:
        big = torch.ones(big_mb * 2**20 // 4)  # written, so resident
        time.sleep(0.3)  # several samples while it is held
        del big  # freed inside the block: only the sampling thread saw it
    with PeakMemory(compose_config("accelerator=cpu").accelerator) as second:
        torch.ones(1000).sum()
    assert first.mb > second.mb + 0.8 * big_mb
    # What cost/peak_memory_mb used to be (ru_maxrss, the lifetime peak) says the second block held it too.
    lifetime_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert lifetime_mb > second.mb + 0.8 * big_mb


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("32-true", None)])
def test_cached_features_are_computed_at_the_trainers_precision(precision, dtype):
    """On GPU the trainer runs bf16-mixed: the backbone behind an uncached head runs under bf16 autocast, so the
    cached features must be computed under it too (here on CPU, where torch's autocast does the same)."""
    from trainwise.data import build_datamodule
    from trainwise.data.features import cache_features
    from trainwise.models import build_model

    cfg = compose_config("model=timm", "model.name=test_resnet", "dataset=digits")
    datamodule = build_datamodule(cfg.dataset, cfg.seed, input_shape=(1, 16))
    backbone = build_model(cfg.model, datamodule.num_classes, 1, 16).backbone.eval()
    datamodule.data = replace(datamodule.data, images=datamodule.data.images[:128])  # bf16 on CPU is slow
    images = datamodule.data.images
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        expected = backbone(images).float()
    cached = cache_features(datamodule, backbone, len(images), device="cpu", precision=precision).data.images
    assert cached.dtype == torch.float32
    torch.testing.assert_close(cached, expected, rtol=0, atol=0)
    if dtype is not None:  # the precisions differ: comparing them is a real check
        with torch.no_grad():
            assert not torch.equal(backbone(images), expected)
