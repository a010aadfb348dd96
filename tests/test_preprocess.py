"""Each model's own preprocessing: timm architectures normalize as their pretrained config says, scratch and
fine-tune alike; a trainwise foundation's normalization reaches its fine-tunes; the imagenet recipe."""

from __future__ import annotations

import pytest
import torch

from helpers import compose_config, mlflow_client, run_job
from trainwise.data.augment import center_crop, random_resized_crop_flip
from trainwise.models import build_model
from trainwise.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, for_channels, resolve


def test_a_timm_model_resolves_its_pretrained_data_config_and_ours_see_raw_pixels():
    resnet = resolve(compose_config("model=resnet18").model)
    assert resnet.mean == IMAGENET_MEAN and resnet.std == IMAGENET_STD
    assert (resnet.interpolation, resnet.crop_pct, resnet.source) == ("bicubic", 0.95, "timm:resnet18.a1_in1k")
    assert resolve(compose_config("model=small_cnn").model) == Preprocess()
    assert resolve(compose_config("model=small_cnn", "model.normalize=imagenet").model).mean == IMAGENET_MEAN
    assert resolve(compose_config("model=resnet18", "model.normalize=none").model).mean is None
    grey = for_channels(resnet, 1)
    assert grey.mean == pytest.approx((sum(IMAGENET_MEAN) / 3,)) and grey.std == pytest.approx((sum(IMAGENET_STD) / 3,))


def test_the_backbone_of_a_timm_model_sees_normalized_inputs():
    cfg = compose_config("model=resnet18")
    net = build_model(cfg.model, 4, 3, 32, resolve(cfg.model)).eval()
    seen = []
    net.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images = torch.rand(2, 3, 32, 32)
    net(images)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(seen[0], (images - mean) / std)
    assert net.state_dict().keys() == build_model(cfg.model, 4, 3, 32).state_dict().keys()  # checkpoints unchanged


def test_a_trainwise_foundation_records_its_normalization_and_its_fine_tune_reuses_it(tmp_path, store_uri):
    foundation = run_job(tmp_path / "a", store_uri, "strategy=full", "model.normalize=imagenet")
    client = mlflow_client(store_uri)
    assert client.get_run(foundation.run_id).data.params["preprocess.source"] == "imagenet"
    checkpoint = next((tmp_path / "a" / "job").rglob("best.ckpt"))
    recorded = torch.load(checkpoint, weights_only=True)["trainwise"]["preprocess"]
    assert recorded["mean"] == pytest.approx([sum(IMAGENET_MEAN) / 3])  # the digits are grayscale
    tuned = run_job(
        tmp_path / "b", store_uri, "strategy=finetune", f"strategy.pretrained={checkpoint}", "model.normalize=none"
    )
    params = client.get_run(tuned.run_id).data.params
    assert params["preprocess.source"] == "imagenet"  # the foundation's, not model.normalize=none
    assert params["preprocess.mean"] == client.get_run(foundation.run_id).data.params["preprocess.mean"]


def test_random_resized_crop_draws_boxes_as_torchvision_and_resizes_each_image():
    images = torch.arange(2 * 1 * 20 * 20, dtype=torch.float32).view(2, 1, 20, 20)
    first = random_resized_crop_flip(images, 8, torch.Generator().manual_seed(0))
    again = random_resized_crop_flip(images, 8, torch.Generator().manual_seed(0))
    other = random_resized_crop_flip(images, 8, torch.Generator().manual_seed(1))
    assert first.shape == (2, 1, 8, 8) and torch.equal(first, again) and not torch.equal(first, other)
    # scale=(1, 1), ratio=(1, 1): the box is the whole image, so the crop is torchvision's resize (or its mirror)
    from torchvision.transforms.v2 import functional as TF

    whole = random_resized_crop_flip(images, 10, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    resized = TF.resize(images, [10, 10], antialias=True)
    flipped = [torch.equal(w, r.flip(-1)) for w, r in zip(whole, resized, strict=True)]
    assert all(torch.equal(w, r) or f for w, r, f in zip(whole, resized, flipped, strict=True))
    # over many draws: about half flipped, and boxes of many sizes (not one crop for the whole batch)
    many = torch.rand(400, 1, 20, 20)
    crops = random_resized_crop_flip(many, 8, torch.Generator().manual_seed(2))
    assert len({tuple(c.flatten()[:3].tolist()) for c in crops}) == 400
    assert torch.equal(center_crop(images, 8), images[..., 6:14, 6:14])


def test_a_timm_run_feeds_its_backbone_normalized_batches_and_logs_the_preprocessing(tmp_path, store_uri):
    """Through the recipe: what the backbone receives is the training batch normalized by resnet18's config."""
    import pytorch_lightning as pl

    from trainwise.jobs import JobContext, run

    class Spy(pl.Callback):
        batch = backbone_input = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.batch is None:
                self.batch = batch[0].clone()
                hook = pl_module.net.backbone.register_forward_pre_hook(
                    lambda module, args: setattr(self, "backbone_input", args[0].detach().clone()) or hook.remove()
                )

    spy = Spy()
    cfg = compose_config("profile=smoke", f"tracking.uri={store_uri}", "model=resnet18", "dataset.image_size=16")
    result = run(cfg, JobContext(job_dir=tmp_path / "job", callbacks=[spy]))
    mean = torch.tensor(sum(IMAGENET_MEAN) / 3).view(1, 1, 1, 1)  # the digits are grayscale
    std = torch.tensor(sum(IMAGENET_STD) / 3).view(1, 1, 1, 1)
    assert 0 <= spy.batch.min() and spy.batch.max() <= 1
    assert torch.allclose(spy.backbone_input, (spy.batch - mean) / std, atol=1e-6)
    params = mlflow_client(store_uri).get_run(result.run_id).data.params
    assert params["preprocess.source"] == "timm:resnet18.a1_in1k" and params["preprocess.interpolation"] == "bicubic"
