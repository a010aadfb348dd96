"""device_resident_speedup: a per-sample DataLoader with torchvision augmentation / device-resident tensors."""

from __future__ import annotations

import time

from baselines import net_and_data
from harness import compose, epoch_figures, interleave, sync

# The glyphs subset for device_resident_speedup on CPU: the full 62,000 images (num_per_class=1000) make the
# per-sample baseline take too long for a 6-minute `make bench` on 2 cores.
GLYPHS_PER_CLASS_CPU = 300


def device_resident(
    reps: int, quick: bool, per_class: int = GLYPHS_PER_CLASS_CPU, device: str = "cpu"
) -> dict[str, float]:
    """Training with crop/flip augmentation (glyphs' shipped `augment_pad`), the same small_cnn trained by the same
    plain loop, fed two ways:
    baseline: a per-sample DataLoader (a Dataset applying torchvision's v2.RandomCrop(padding) +
    v2.RandomHorizontalFlip to one image per __getitem__, RandomSampler, default collate, 0 workers), each batch
    then copied to `device`;
    candidate: trainwise's TensorDataModule with `dataset.augment=crop_flip`: split tensors placed on `device` once
    (`place_on`, what its setup() does under a Trainer), whole batches indexed at once, crop/flip drawn for the
    whole batch on the device (`augment_batch`, what its on_after_batch_transfer hook does)."""
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader, Dataset, RandomSampler

    from trainwise.data.augment import per_sample_transform

    cfg = compose(
        "model=small_cnn", "dataset=glyphs", f"dataset.num_per_class={per_class}", "dataset.augment=crop_flip"
    )
    net, datamodule = net_and_data(cfg)
    net.to(device)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    idx = torch.from_numpy(datamodule.train_idx)
    images, labels = datamodule.data.images[idx], datamodule.data.labels[idx]
    transform = per_sample_transform(int(images.shape[-1]), int(cfg.dataset.augment_pad))

    class PerSample(Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int):
            return transform(images[i]), labels[i]

    per_sample = DataLoader(PerSample(), batch_size=datamodule.batch_size, sampler=RandomSampler(PerSample()))
    datamodule.place_on(torch.device(device))
    batched = datamodule.train_dataloader()
    epochs = 2 if quick else 3

    def batches(loader, epoch: int):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for step, (x, y) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # no-op when resident
            if loader is batched:
                x = datamodule.augment_batch(x, epoch, step)
            yield x, y

    def epochs_through(loader) -> float:
        starts = []
        for epoch in range(epochs):
            sync()
            starts.append(time.perf_counter())
            for x, y in batches(loader, epoch):
                loss = F.cross_entropy(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        sync()
        return epoch_figures(starts, time.perf_counter(), [])["epoch_s"]

    def pipeline_only(loader) -> float:
        sync()
        started = time.perf_counter()
        for _ in batches(loader, 0):
            pass
        sync()
        return time.perf_counter() - started

    base, cand = interleave(reps, lambda: epochs_through(per_sample), lambda: epochs_through(batched))
    # Detail: the input pipeline alone (one epoch of augmented batches on the device, no model).
    pipe_base, pipe_cand = interleave(max(reps, 3), lambda: pipeline_only(per_sample), lambda: pipeline_only(batched))
    return {
        "speedup": base / cand,
        "per_sample_epoch_s": base,
        "batched_epoch_s": cand,
        "pipeline_only_per_sample_s": pipe_base,
        "pipeline_only_batched_s": pipe_cand,
        "pipeline_only_speedup": pipe_base / pipe_cand,
        "train_images": len(idx),
        "glyphs_num_per_class": per_class,
        "augment_pad": int(cfg.dataset.augment_pad),
        "resident": datamodule.resident_device is not None,
    }
