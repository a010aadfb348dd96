"""Fine-tuning really starts from the foundation and freezes what it says it freezes."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from helpers import compose_config, mlflow_client, run_job
from trainwise.data import ImageTensors, TensorDataModule
from trainwise.models import build_model
from trainwise.module import ClassificationModule
from trainwise.strategies.freeze import freeze, param_groups, parse_freeze
from trainwise.strategies.pretrained import Foundation, load_into, load_weights_file


def _tiny_data(num_classes=4, n=64, size=8) -> TensorDataModule:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, size, size, generator=generator)
    labels = torch.arange(n) % num_classes
    cfg = compose_config().dataset
    cfg.batch_size, cfg.test_fraction, cfg.val_fraction = 16, 0.25, 0.25
    return TensorDataModule(ImageTensors(images, labels, [str(i) for i in range(num_classes)]), cfg, seed=0)


def _fit(net, spec: str, steps: int = 3, backbone_lr_mult: float = 1.0):
    frozen = freeze(net, spec)
    data = _tiny_data()
    module = ClassificationModule(
        net, data.num_classes, compose_config().optimizer, compose_config().scheduler,
        param_groups(net, 0.01, backbone_lr_mult), frozen, checkpoint_meta={},
    )  # fmt: skip
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, datamodule=data)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_freeze_backbone_keeps_weights_and_batchnorm_statistics_and_trains_the_head():
    net = build_model(compose_config("model=timm", "model.name=test_resnet").model, 4, 1, 8)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.backbone.modules())
    backbone, head = _snapshot(net.backbone), _snapshot(net.head)
    _fit(net, "backbone")
    after = net.backbone.state_dict()
    for key, value in backbone.items():  # weights and running_mean/var/num_batches_tracked alike
        assert torch.equal(after[key], value), key
    assert any(not torch.equal(net.head.state_dict()[k], v) for k, v in head.items())


def test_freeze_none_trains_the_backbone_and_its_batchnorm():
    net = build_model(compose_config("model=timm", "model.name=test_resnet").model, 4, 1, 8)
    before = _snapshot(net.backbone)
    _fit(net, "none")
    changed = {k for k, v in before.items() if not torch.equal(net.backbone.state_dict()[k], v)}
    assert any("running_mean" in k for k in changed) and any(k.endswith("conv1.weight") for k in changed)


@pytest.mark.parametrize("model", ["small_cnn", "mlp"])
def test_freeze_stages_freezes_the_first_k_groups_only(model):
    net = build_model(compose_config(f"model={model}").model, 4, 1, 8)
    before = _snapshot(net.backbone)
    _fit(net, "stages:1")
    changed = {k for k, v in before.items() if not torch.equal(net.backbone.state_dict()[k], v)}
    assert changed and all(not k.startswith("stages.0.") for k in changed)
    assert all(not p.requires_grad for p in net.backbone.stages[0].parameters())
    assert all(p.requires_grad for p in net.backbone.stages[1].parameters())


def test_backbone_lr_mult_sets_the_backbone_group_lr():
    net = build_model(compose_config().model, 4, 1, 8)
    groups = {g["name"]: g for g in param_groups(net, 0.01, 0.1)}
    assert groups["head"]["lr"] == 0.01 and groups["backbone"]["lr"] == pytest.approx(0.001)
    freeze(net, "backbone")
    assert [g["name"] for g in param_groups(net, 0.01, 0.1)] == ["head"]


def test_parse_freeze_rejects_bad_values():
    assert parse_freeze("stages:2") == ("stages", 2)
    for bad in ("stages:0", "stages:x", "head", ""):
        with pytest.raises(Exception, match="strategy.freeze"):
            parse_freeze(bad)


def test_finetune_backbone_starts_equal_to_the_foundation_checkpoint(tmp_path, store_uri):
    full = run_job(tmp_path / "full", store_uri, "strategy=full")
    path = mlflow_client(store_uri).download_artifacts(full.run_id, "checkpoints/best.ckpt", str(tmp_path))
    backbone_state, meta = load_weights_file(__import__("pathlib").Path(path))
    assert meta["input_shape"] == [1, 8] and meta["model"]["name"] == "small_cnn"
    net = build_model(compose_config().model, 10, 1, 8)  # digits: 10 classes, the foundation had 62
    load_into(net, Foundation(backbone_state, source=path))
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, raw[f"net.backbone.{key}"]), key
    assert net.head.out_features == 10


def test_finetune_with_frozen_backbone_end_to_end(tmp_path, store_uri):
    result = run_job(tmp_path, store_uri, "strategy=finetune", "strategy.freeze=backbone")
    client = mlflow_client(store_uri)
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["model/params_trainable"] == 64 * 10 + 10  # the new head only
    foundation_run = client.get_run(result.run_id).data.tags["trainwise.foundation_run"]
    found = client.download_artifacts(foundation_run, "checkpoints/best.ckpt", str(tmp_path / "f"))
    tuned = client.download_artifacts(result.run_id, "checkpoints/last.ckpt", str(tmp_path / "t"))
    before = torch.load(found, weights_only=True)["state_dict"]
    after = torch.load(tuned, weights_only=True)["state_dict"]
    for key, value in after.items():
        if key.startswith("net.backbone."):
            assert torch.equal(value, before[key]), key


def test_an_architecture_mismatch_is_a_clear_error(tmp_path):
    from trainwise.errors import UserError

    mlp = build_model(compose_config("model=mlp").model, 10, 1, 8)
    path = tmp_path / "mlp.pt"
    torch.save(mlp.state_dict(), path)
    cnn = build_model(compose_config().model, 10, 1, 8)
    state, _ = load_weights_file(path)
    with pytest.raises(UserError, match="do not fit"):
        load_into(cnn, Foundation(state, source=str(path)))


def test_cached_features_train_the_same_head_as_running_the_backbone(tmp_path, store_uri):
    """Head-only training on features computed once equals running the frozen backbone every step."""
    full = run_job(tmp_path / "full", store_uri, "strategy=full")
    path = mlflow_client(store_uri).download_artifacts(full.run_id, "checkpoints/best.ckpt", str(tmp_path))
    heads = {}
    for cache in ("true", "false"):
        result = run_job(
            tmp_path / cache, store_uri, "strategy=finetune", "strategy.freeze=backbone", f"strategy.pretrained={path}",
            f"strategy.cache_features={cache}", "deterministic=true", "trainer.max_epochs=3",
        )  # fmt: skip
        run = mlflow_client(store_uri).get_run(result.run_id)
        assert (run.data.tags.get("trainwise.cached_features") == "true") == (cache == "true")
        last = mlflow_client(store_uri).download_artifacts(
            result.run_id, "checkpoints/last.ckpt", str(tmp_path / cache)
        )
        heads[cache] = {
            k: v for k, v in torch.load(last, weights_only=True)["state_dict"].items() if k.startswith("net.head")
        }
    for key, value in heads["true"].items():
        torch.testing.assert_close(value, heads["false"][key], rtol=1e-5, atol=1e-6)


def test_layer_decay_lr_scales_reach_the_optimizer_after_a_scheduler_step():
    from timm.optim import param_groups_layer_decay

    net = build_model(compose_config("model=timm", "model.name=test_resnet").model, 4, 1, 8)
    expected = sorted({round(g["lr_scale"], 6) for g in param_groups_layer_decay(net.backbone, layer_decay=0.5)})
    data = _tiny_data()
    cfg = compose_config("scheduler=cosine", "scheduler.eta_min_ratio=0.5")
    module = ClassificationModule(
        net, 4, cfg.optimizer, cfg.scheduler, param_groups(net, 0.01, 0.1, layer_decay=0.5), [], checkpoint_meta={}
    )
    trainer = pl.Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, datamodule=data)
    optimizer = trainer.optimizers[0]
    head_lr = next(g["lr"] for g in optimizer.param_groups if g["name"] == "head")
    backbone = sorted({round(g["lr"] / (head_lr * 0.1), 6) for g in optimizer.param_groups if g["name"] != "head"})
    assert head_lr < 0.01  # the cosine schedule has moved every group...
    assert backbone == expected and len(expected) > 2  # ...and each kept its layer-wise scale


def test_unfreeze_at_epoch_keeps_the_backbone_frozen_until_then():
    from trainwise.strategies.unfreeze import UnfreezeBackbone

    net = build_model(compose_config("model=timm", "model.name=test_resnet").model, 4, 1, 8)
    frozen = freeze(net, "backbone")
    data = _tiny_data()
    cfg = compose_config()
    module = ClassificationModule(net, 4, cfg.optimizer, cfg.scheduler, param_groups(net, 0.01, 0.1), frozen, {})
    seen = []

    class Watch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(_snapshot(pl_module.net.backbone))

    before = _snapshot(net.backbone)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[UnfreezeBackbone(at_epoch=2, lr=0.001), Watch()])  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert all(torch.equal(seen[1][k], v) for k, v in before.items())  # epochs 0 and 1: frozen, BN stats too
    assert any(not torch.equal(seen[2][k], v) for k, v in before.items())  # epoch 2: training
    assert [g["lr"] for g in trainer.optimizers[0].param_groups][-1] == 0.001


def test_lp_ft_probes_then_fine_tunes_in_one_run(tmp_path, store_uri):
    full = run_job(tmp_path / "full", store_uri, "strategy=full")
    path = mlflow_client(store_uri).download_artifacts(full.run_id, "checkpoints/best.ckpt", str(tmp_path))
    result = run_job(tmp_path / "lpft", store_uri, "strategy=lp_ft", f"strategy.pretrained={path}",
                     "strategy.unfreeze_at_epoch=1", "trainer.max_epochs=2")  # fmt: skip
    client = mlflow_client(store_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["strategy.name"] == "lp_ft"
    assert run.data.tags["trainwise.cached_features"] == "false"  # the backbone must run: it is unfrozen later
    last = client.download_artifacts(result.run_id, "checkpoints/last.ckpt", str(tmp_path / "t"))
    before = torch.load(path, weights_only=True)["state_dict"]
    after = torch.load(last, weights_only=True)["state_dict"]
    changed = [k for k, v in after.items() if k.startswith("net.backbone.") and not torch.equal(v, before[k])]
    assert changed  # phase 2 trained the backbone


def test_unfreeze_at_epoch_with_freeze_stages_unfreezes_only_the_stages_after_k():
    from trainwise.strategies.unfreeze import UnfreezeBackbone

    net = build_model(compose_config("model=timm", "model.name=test_resnet").model, 4, 1, 8)
    frozen = freeze(net, "stages:1")  # the stem
    stem = {k for k, _ in net.backbone.named_parameters() if k.startswith(("conv1.", "bn1."))}
    assert stem and all(not p.requires_grad for k, p in net.backbone.named_parameters() if k in stem)
    cfg = compose_config()
    module = ClassificationModule(net, 4, cfg.optimizer, cfg.scheduler, param_groups(net, 0.01, 0.1), frozen, {})
    seen = []

    class Watch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append((_snapshot(pl_module.net.backbone), {k for k, p in net.backbone.named_parameters()
                                                             if p.requires_grad}))  # fmt: skip

    before = _snapshot(net.backbone)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[UnfreezeBackbone(at_epoch=1, lr=0.001), Watch()])  # fmt: skip
    trainer.fit(module, datamodule=_tiny_data())
    (epoch0, trainable0), (epoch1, trainable1) = seen
    assert not trainable0 and all(torch.equal(epoch0[k], v) for k, v in before.items())  # head only, BN stats too
    stem_state = [k for k in before if k.startswith(("conv1.", "bn1."))]  # weights and BatchNorm statistics
    assert all(torch.equal(epoch1[k], before[k]) for k in stem_state)  # the first k stages stay frozen...
    assert trainable1 == {k for k, _ in net.backbone.named_parameters()} - stem
    changed = {k for k, v in before.items() if not torch.equal(epoch1[k], v)}
    assert any(k.startswith("layer") and "running_mean" in k for k in changed)  # ...the others train, BN too
    assert any(k.startswith("layer") and k.endswith("conv1.weight") for k in changed)
