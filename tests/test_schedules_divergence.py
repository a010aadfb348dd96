"""A non-finite training loss stops training on every rank at the same step, whichever rank saw it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainwise.module import ClassificationModule

# A 2-class problem on 4 features; `NAN_ON` = {rank: batch index} gets a NaN input batch there.
MODULE = """
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainwise.module import ClassificationModule

NAN_ON = {}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = nn.Flatten(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.backbone(x))


class NanOn(ClassificationModule):
    def training_step(self, batch, batch_idx):
        images, labels = batch
        if NAN_ON.get(self.global_rank) == batch_idx:
            images = images * float("nan")
        return super().training_step((images, labels), batch_idx)


def module():
    net = Net()
    optimizer = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    groups = [{"params": list(net.parameters()), "name": "head"}]
    return NanOn(net, 2, optimizer, OmegaConf.create({"name": "none"}), groups, [], {})


def data():
    return DataLoader(TensorDataset(torch.rand(32, 4), torch.arange(32) % 2), batch_size=4)
"""

DDP_SCRIPT = """
import sys

import pytorch_lightning as pl

import tiny

tiny.NAN_ON = {1: 3}  # rank 1's last batch of the epoch (16 samples per rank, 4 per batch): checked at epoch end
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, limit_val_batches=0)
try:
    trainer.fit(tiny.module(), train_dataloaders=tiny.data())
except FloatingPointError as err:
    print(f"rank {trainer.global_rank}: FloatingPointError: {err}", flush=True)
    sys.exit(3)
print(f"rank {trainer.global_rank}: finished", flush=True)
"""


def _net() -> nn.Module:
    net = nn.Module()
    net.backbone, net.head = nn.Flatten(), nn.Linear(4, 2)
    net.forward = lambda x: net.head(net.backbone(x))
    return net


class OtherRankSawNaN(pl.strategies.SingleDeviceStrategy):
    """This process's losses are all finite; the ranks' joint decision says one of them was not."""

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return True if not all else decision


def test_the_nonfinite_loss_check_is_decided_over_the_ranks_and_kept_out_of_ddp_buffer_broadcast():
    net = _net()
    optimizer = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    module = ClassificationModule(
        net, 2, optimizer, OmegaConf.create({"name": "none"}), [{"params": list(net.parameters())}], [], {}
    )
    # DDP broadcasts registered buffers from rank 0 at every forward: rank 1's count would be overwritten.
    assert not any("nonfinite" in name for name, _ in module.named_buffers())
    data = DataLoader(TensorDataset(torch.rand(16, 4), torch.arange(16) % 2), batch_size=4)
    trainer = pl.Trainer(strategy=OtherRankSawNaN(device=torch.device("cpu")), max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    with pytest.raises(FloatingPointError, match="by step 4"):
        trainer.fit(module, train_dataloaders=data)


@pytest.mark.slow
def test_ddp_a_nan_on_rank_1_only_stops_both_ranks_with_the_same_error(tmp_path):
    (tmp_path / "tiny.py").write_text(MODULE)
    (tmp_path / "ddp_nan.py").write_text(DDP_SCRIPT)
    done = subprocess.run([sys.executable, "ddp_nan.py"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    # Both ranks print to the same pipe: their lines may interleave.
    raised = sorted(
        re.findall(r"rank (\d): FloatingPointError: (train/loss became NaN or infinite by step \d+)", done.stdout)
    )
    expected = "train/loss became NaN or infinite by step 4"
    assert raised == [("0", expected), ("1", expected)], done.stdout[-2000:] + done.stderr[-3000:]
    assert "finished" not in done.stdout
