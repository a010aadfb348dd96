"""The GPU figures (`--gpu`; they cannot run on the 2-core CPU machine, guarded by torch.cuda.is_available())."""

from __future__ import annotations

import sys
from pathlib import Path

from figures.cached_features import cached_features
from figures.device_resident import GLYPHS_PER_CLASS_CPU, device_resident
from figures.framework import framework_overhead


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
