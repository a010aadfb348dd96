"""Splits a user can make too small: one clear UserError line naming the split or class and the fix."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from helpers import compose_config
from trainwise.data import ImageTensors, TensorDataModule, build_datamodule
from trainwise.data.batches import EpochBatches
from trainwise.errors import UserError


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_split_smaller_than_the_ranks_names_split_size_ranks_and_fix(shuffle):
    with pytest.raises(UserError) as error:
        EpochBatches(3, 8, seed=0, shuffle=shuffle, rank=3, world_size=4, split="val")
    message = _one_line(error)
    for part in ("val split has 3 images", "4 DDP ranks", "accelerator.devices", "dataset.val_fraction"):
        assert part in message
    EpochBatches(4, 8, seed=0, shuffle=shuffle, rank=3, world_size=4, split="val")  # one each is enough


def test_the_datamodule_names_the_split_its_loader_is_for():
    labels = torch.arange(40) % 4
    cfg = compose_config("dataset.test_fraction=0.1", "dataset.val_fraction=0.1").dataset
    dm = TensorDataModule(ImageTensors(torch.rand(40, 1, 4, 4), labels, list("abcd")), cfg, seed=0)
    assert dm.sizes()["test"] == 4
    with pytest.raises(UserError, match="the train split has"):
        dm.steps_per_epoch(world_size=64)  # what a run logs before it trains: caught before any rank starts
    dm.trainer = SimpleNamespace(global_rank=5, world_size=6)  # what _loader reads of Lightning's trainer
    with pytest.raises(UserError, match="the test split has 4 images, fewer than the 6 DDP ranks"):
        dm.test_dataloader()
    assert len(dm.train_dataloader().sampler) >= 1


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (4, 4), 20 * i).save(root / name / f"{i}.png")
    return root


def test_a_class_with_one_image_names_the_class_and_the_fix(tmp_path):
    root = _folder(tmp_path / "photos", {"cat": 12, "dog": 12, "emu": 1})
    cfg = compose_config("dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=4",
                         "dataset.test_fraction=0.2", "dataset.val_fraction=0.2").dataset  # fmt: skip
    with pytest.raises(UserError) as error:
        build_datamodule(cfg, seed=0)
    message = _one_line(error)
    assert "class 'emu' has only 1 image" in message and "test split" in message and "add images" in message


def test_a_fraction_that_takes_every_image_is_a_user_error():
    cfg = compose_config("dataset.test_fraction=0", "dataset.val_fraction=1.0").dataset
    data = ImageTensors(torch.rand(8, 1, 4, 4), torch.arange(8) % 2, ["a", "b"])
    with pytest.raises(UserError, match=r"dataset.val_fraction=1.0 takes all 8 remaining images"):
        TensorDataModule(data, cfg, seed=0)


def _digits(*overrides: str, seed: int = 0) -> TensorDataModule:
    return build_datamodule(compose_config(*overrides).dataset, seed=seed)


@pytest.mark.parametrize("fraction", [0.01, 0.02, 0.05, 0.2])
def test_validation_images_come_out_of_the_labelled_budget(fraction):
    """A run told it has 1 % of the labels uses 1 % of the labels, validation included: no run selects its
    checkpoint on more validation images than it trains on, and the budget is train + val."""
    full = _digits()
    pool = full.sizes()["train"] + full.sizes()["val"]  # every image that is not in the test split
    dm = _digits(f"dataset.train_fraction={fraction}")
    sizes = dm.sizes()
    assert sizes["test"] == full.sizes()["test"] and dm.test_idx.tolist() == full.test_idx.tolist()
    assert abs(sizes["train"] + sizes["val"] - fraction * pool) <= dm.num_classes  # per-class rounding
    assert sizes["val"] <= sizes["train"]
    assert not set(dm.val_idx) & set(dm.train_idx) and not set(dm.val_idx) & set(dm.test_idx)
    if sizes["val"]:
        assert sizes["val"] >= dm.num_classes and dm.has_validation
    else:
        assert not dm.has_validation


def test_a_budget_too_small_for_validation_has_none_and_a_larger_one_has_some():
    five = _digits("dataset.train_fraction=0.05")  # 63 labelled digits: 15 % of them is 9, < 1 per class
    assert five.sizes()["train"] == 63 and not five.has_validation
    ten = _digits("dataset.train_fraction=0.1")  # 129: 110 to train on, 19 to select on
    assert ten.has_validation and (ten.sizes()["train"], ten.sizes()["val"]) == (110, 19)
    other_seed = _digits("dataset.train_fraction=0.1", seed=1)
    assert other_seed.val_idx.tolist() != ten.val_idx.tolist()  # drawn with the run's seed, like its labels


def test_full_data_and_val_from_labelled_false_keep_the_fixed_validation_split():
    full = _digits()
    assert full.sizes() == {"train": 1100, "val": 194, "test": 503}
    fixed = _digits("dataset.train_fraction=0.01", "dataset.val_from_labelled=false")
    assert fixed.val_idx.tolist() == full.val_idx.tolist() and fixed.sizes()["train"] == 10
