"""LP-FT (strategy.unfreeze_at_epoch) with the LR schedule, and resumed after the unfreeze: real runs."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from helpers import compose_config, mlflow_client, run_job
from trainwise.callbacks import GracefulStop
from trainwise.errors import Interrupted
from trainwise.strategies.unfreeze import UnfreezeBackbone

AT_EPOCH = 1


@pytest.fixture(scope="module")
def foundation(tmp_path_factory) -> str:
    """A trained `full` run's best.ckpt, as a local file (its own store): the pretrained weights of each test."""
    tmp_path = tmp_path_factory.mktemp("foundation")
    store_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    full = run_job(tmp_path, store_uri, "strategy=full")
    return mlflow_client(store_uri).download_artifacts(full.run_id, "checkpoints/best.ckpt", str(tmp_path))


def _lp_ft(path: str, scheduler: str, max_epochs: int) -> tuple[str, ...]:
    return ("strategy=lp_ft", f"strategy.pretrained={path}", f"strategy.unfreeze_at_epoch={AT_EPOCH}",
            f"trainer.max_epochs={max_epochs}", f"scheduler={scheduler}",
            *(["scheduler.eta_min_ratio=0.1"] if scheduler == "cosine" else []))  # fmt: skip


def _record_lrs(patch) -> list[tuple[int, int, int, dict[str, float]]]:
    """(epoch, global step, total steps, LR of each named group) at the start of every training batch: the LRs
    that batch's optimizer step uses."""
    seen = []

    def record(self, trainer, pl_module, batch, batch_idx):
        lrs = {group.get("name", "unnamed"): group["lr"] for group in trainer.optimizers[0].param_groups}
        seen.append((trainer.current_epoch, trainer.global_step, int(trainer.estimated_stepping_batches), lrs))

    patch.setattr(UnfreezeBackbone, "on_train_batch_start", record, raising=False)
    return seen


def _assert_cosine(seen, head_lr: float, backbone_lr: float, floor: float = 0.1) -> None:
    """Every group's LR is its own initial LR times the one global cosine factor at that step."""
    for epoch, step, total, lrs in seen:
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
        assert lrs["head"] == pytest.approx(head_lr * factor, rel=1e-9), (epoch, step)
        if epoch >= AT_EPOCH:
            assert lrs["backbone"] == pytest.approx(backbone_lr * factor, rel=1e-9), (epoch, step)
        else:
            assert "backbone" not in lrs


def test_lp_ft_with_cosine_schedules_the_backbone_group_from_the_step_it_joins(
    tmp_path, store_uri, monkeypatch, foundation
):
    seen = _record_lrs(monkeypatch)
    result = run_job(tmp_path / "lpft", store_uri, *_lp_ft(foundation, "cosine", max_epochs=3))
    assert mlflow_client(store_uri).get_run(result.run_id).info.status == "FINISHED"
    cfg = compose_config("strategy=lp_ft")
    _assert_cosine(seen, cfg.optimizer.lr, cfg.optimizer.lr * cfg.strategy.backbone_lr_mult)
    joined = [step for epoch, step, _, _ in seen if epoch >= AT_EPOCH]
    assert len(joined) >= 4 and joined[0] > 0  # it joined mid-schedule and its LR moved over several steps
    assert len({lrs["backbone"] for epoch, _, _, lrs in seen if epoch >= AT_EPOCH}) == len(joined)


@pytest.mark.parametrize("scheduler", ["none", "cosine"])
def test_lp_ft_resumed_after_the_unfreeze_keeps_training_the_backbone(
    tmp_path, store_uri, monkeypatch, foundation, scheduler
):
    job = (*_lp_ft(foundation, scheduler, max_epochs=4), "last_checkpoint_every_s=0")  # last.ckpt at each epoch end

    def sigint_after_epoch_2(self, trainer, pl_module):  # one epoch past the unfreeze
        if trainer.current_epoch == AT_EPOCH + 1:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(GracefulStop, "on_train_epoch_end", sigint_after_epoch_2)
        with pytest.raises(Interrupted) as stopped:
            run_job(tmp_path / "cut", store_uri, *job)
    cut_id = stopped.value.run_id
    client = mlflow_client(store_uri)
    saved = client.download_artifacts(cut_id, "checkpoints/last.ckpt", str(tmp_path / "saved"))
    saved_backbone = {
        k.removeprefix("net.backbone."): v
        for k, v in torch.load(saved, weights_only=True)["state_dict"].items()
        if k.startswith("net.backbone.")
    }

    ends = []  # (epoch, backbone parameters that require grad / all of them, backbone weights) per resumed epoch

    def record_epoch_end(self, trainer, pl_module):
        params = list(pl_module.net.backbone.parameters())
        state = {k: v.detach().clone() for k, v in pl_module.net.backbone.state_dict().items()}
        ends.append((trainer.current_epoch, sum(p.requires_grad for p in params), len(params), state))

    monkeypatch.setattr(UnfreezeBackbone, "on_train_epoch_end", record_epoch_end, raising=False)
    seen = _record_lrs(monkeypatch)
    from trainwise.jobs import JobContext, run

    run(compose_config("profile=smoke", f"tracking.uri={store_uri}", f"resume={cut_id}"),
        JobContext(job_dir=tmp_path / "resumed"))  # fmt: skip
    assert client.get_run(cut_id).info.status == "FINISHED"
    assert [epoch for epoch, *_ in ends] == [AT_EPOCH + 2]  # only the last epoch ran again
    _, trainable, total, state = ends[0]
    assert trainable == total > 0
    changed = [k for k, v in state.items() if not torch.equal(v, saved_backbone[k])]
    assert "stages.0.0.weight" in changed and "stages.2.3.weight" in changed  # the first and the last stage
    if scheduler == "cosine":
        cfg = compose_config("strategy=lp_ft")
        _assert_cosine(seen, cfg.optimizer.lr, cfg.optimizer.lr * cfg.strategy.backbone_lr_mult)
