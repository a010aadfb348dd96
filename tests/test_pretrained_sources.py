"""Pretrained weights from every source and file format load into the backbone; a new head for new classes."""

from __future__ import annotations

import pytest
import timm
import torch

from helpers import compose_config, mlflow_client, run_job
from trainwise.errors import UserError
from trainwise.models import build_model
from trainwise.strategies.pretrained import Foundation, load_into, load_weights_file


@pytest.fixture(scope="module")
def timm_model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=7, in_chans=1)  # its own 7-class head


def _save(model, path, fmt: str):
    state = model.state_dict()
    if fmt == "pth":
        torch.save(state, path)
    elif fmt == "pt-timm-checkpoint":  # what timm's train.py writes
        torch.save({"epoch": 3, "arch": "test_resnet", "state_dict": state}, path)
    elif fmt == "pt-ddp":
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.mark.parametrize("fmt", ["pth", "pt-timm-checkpoint", "pt-ddp", "safetensors"])
def test_timm_weights_in_each_file_format_load_and_skip_the_old_head(tmp_path, timm_model, fmt):
    path = tmp_path / ("weights.safetensors" if fmt == "safetensors" else f"weights.{fmt.split('-')[0]}")
    _save(timm_model, path, fmt)
    state, _ = load_weights_file(path)
    net = build_model(compose_config("model=timm", "model.name=test_resnet").model, 10, 1, 8)  # 10 classes now
    skipped = load_into(net, Foundation(state, source=str(path)))
    assert set(skipped) == {"fc.weight", "fc.bias"}  # the 7-class head, re-initialised for 10 classes
    reference = timm_model.state_dict()
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert net.head.out_features == 10


def test_grayscale_weights_adapt_to_colour_input(tmp_path, timm_model):
    path = tmp_path / "gray.pth"
    _save(timm_model, path, "pth")
    state, _ = load_weights_file(path)
    net = build_model(compose_config("model=timm", "model.name=test_resnet").model, 10, 3, 8)
    load_into(net, Foundation(state, source=str(path)))
    gray = torch.rand(2, 1, 8, 8)
    timm_model.eval(), net.eval()
    with torch.no_grad():  # the same grayscale image, as 1 channel before and repeated over 3 now
        torch.testing.assert_close(
            net.backbone(gray.repeat(1, 3, 1, 1)),
            timm_model.forward_head(timm_model.forward_features(gray), pre_logits=True),
        )


def test_missing_backbone_weights_are_an_architecture_mismatch(tmp_path, timm_model):
    state = {k: v for k, v in timm_model.state_dict().items() if not k.startswith("layer1")}
    net = build_model(compose_config("model=timm", "model.name=test_resnet").model, 10, 1, 8)
    with pytest.raises(UserError, match="do not fit"):
        load_into(net, Foundation(state, source="partial"))


def version_experiment(client, run_id: str) -> str:
    return client.get_run(run_id).info.experiment_id


def test_full_runs_are_registered_and_models_uri_finds_them(tmp_path, store_uri):
    full = run_job(tmp_path / "full", store_uri, "strategy=full")
    client = mlflow_client(store_uri)
    version = client.get_model_version_by_alias("trainwise-small_cnn-glyphs", "newest")
    assert version.run_id == full.run_id
    (logged,) = client.search_logged_models([version_experiment(client, full.run_id)])  # the UI's Logged models
    assert logged.source_run_id == full.run_id and logged.name == "model"
    # An MLflow Model: loaded by alias, it maps a batch of images to scores over the source's classes.
    import mlflow.pytorch
    import torch

    from trainwise.tracking.store import tracking_env

    with tracking_env(store_uri):
        network = mlflow.pytorch.load_model("models:/trainwise-small_cnn-glyphs@newest")
    assert network(torch.rand(3, 1, 8, 8)).shape == (3, 62)
    tuned = run_job(
        tmp_path / "ft", store_uri, "strategy=finetune", "strategy.pretrained=models:/trainwise-small_cnn-glyphs@latest"
    )
    run = client.get_run(tuned.run_id)
    assert run.data.tags["trainwise.foundation_run"] == full.run_id
    assert {"test/f1_macro", "test/acc_top5"} <= set(run.data.metrics)
    assert {"plots/confusion_matrix.png", "plots/confusion_matrix.json"} <= {
        a.path for a in client.list_artifacts(tuned.run_id, "plots")
    }
    latest = run_job(
        tmp_path / "l", store_uri, "strategy=finetune", "strategy.pretrained=models:/trainwise-small_cnn-glyphs/latest"
    )
    assert client.get_run(latest.run_id).data.tags["trainwise.foundation_run"] == full.run_id
    with pytest.raises(UserError, match="no such registered model"):
        run_job(tmp_path / "bad", store_uri, "strategy=finetune", "strategy.pretrained=models:/nope@latest")


def test_a_finetune_from_a_logged_foundation_leaves_no_downloaded_copy_behind(tmp_path, store_uri, monkeypatch):
    """Each fine-tune downloaded the foundation's best.ckpt into a new temporary folder it never deleted."""
    import tempfile

    from helpers import run_job

    full = run_job(tmp_path / "full", store_uri, "strategy=full")
    scratch_tmp = tmp_path / "tmp"
    scratch_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_tmp))
    for n in range(2):
        run_job(tmp_path / f"tune{n}", store_uri, "strategy=finetune",
                f"strategy.pretrained=runs:/{full.run_id}/checkpoints/best.ckpt")  # fmt: skip
    left = [p for p in scratch_tmp.rglob("*.ckpt")]
    assert left == []
