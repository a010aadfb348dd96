"""Every shipped experiment (experiments/*.yaml, found by glob: a new file is covered without editing this test)
runs end to end on profile=smoke, offline: the data and weights it would download are written into a tmp folder
in their true on-disk formats (torchvision's MNIST idx files and CIFAR pickles, a folder of PNGs, a timm state
dict saved with torch.save).

Single-run experiments run in-process; sweeps (hydra.mode: MULTIRUN) run as the user runs them, through the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from helpers import cli_env, compose_config, mlflow_client, run_job
from test_datasets import _write_cifar, _write_mnist
from trainwise.data.torchvision_sets import SETS
from trainwise.paths import experiments_dir

EXPERIMENTS = sorted(experiments_dir().glob("*.yaml"))
FAST = ["trainer.max_epochs=1"]  # experiments set their own epochs over profile=smoke's
SMALL_TIMM = "mobilenetv3_small_050"  # its features are wider than num_features says, as vgg16's are


def _is_sweep(path: Path) -> bool:
    return str(OmegaConf.select(OmegaConf.load(path), "hydra.mode", default="")) == "MULTIRUN"


def _needs_timm_weights(path: Path) -> bool:
    return str(OmegaConf.select(OmegaConf.load(path), "strategy.pretrained", default="")) == "timm"


def _cases(path: Path) -> list:
    """As shipped; slow: a sweep (it trains every job of its grid: data_efficiency has 45) or timm's weights of a
    real architecture (vgg16: 0.5 GB of weights and checkpoints, ~1 s per 150 px image on a CPU). Those last also
    run in `make test` with a small architecture in the same recipe (folder, weights file, frozen backbone, head)."""
    if _is_sweep(path):
        return [pytest.param(path, [], id=path.stem, marks=pytest.mark.slow)]
    if _needs_timm_weights(path):
        return [
            pytest.param(path, [], id=path.stem, marks=pytest.mark.slow),
            pytest.param(path, [f"model.name={SMALL_TIMM}"], id=f"{path.stem}-{SMALL_TIMM}"),
        ]
    return [pytest.param(path, [], id=path.stem)]


def _image_folder(root: Path, classes=("cat", "dog"), per_class: int = 10) -> Path:
    """Class folders of RGB PNGs of another size than the experiment's, each class its own colour."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (30, 40, 3)) + np.array([180, 60, 60]) * (k == 0) + 120 * (k == 1)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _offline_inputs(name: str, extra: list[str], tmp_path: Path, monkeypatch) -> list[str]:
    """The overrides that point the experiment at local copies of what it would download."""
    cfg = compose_config("profile=smoke", f"experiment={name}", *extra)
    overrides = []
    for slot in ("dataset", "source"):
        data = cfg[slot]
        root = tmp_path / f"{slot}-data"
        if data.name in SETS:
            if data.name.startswith("cifar"):
                _write_cifar(root, data.name)
                # The real files' md5 sums cannot be matched by small files (as in test_datasets.skip_cifar_md5).
                import torchvision.datasets.cifar

                monkeypatch.setattr(
                    torchvision.datasets.cifar, "check_integrity", lambda f, md5=None: os.path.isfile(f)
                )
            else:
                _write_mnist(root, SETS[data.name].folder.split("/")[0])
            overrides += [f"{slot}.root={root}", f"{slot}.download=false"]
        elif data.name == "imagefolder":
            overrides.append(f"{slot}.root={_image_folder(root)}")
    if str(cfg.strategy.get("pretrained")) == "timm":  # timm's ImageNet weights: the architecture's own state dict
        import timm
        import torch

        weights = tmp_path / f"{cfg.model.name}.pth"
        torch.save(timm.create_model(cfg.model.name, pretrained=False).state_dict(), weights)
        overrides.append(f"strategy.pretrained={weights}")
    return overrides


@pytest.mark.parametrize(("path", "extra"), [case for p in EXPERIMENTS for case in _cases(p)])
def test_every_shipped_experiment_runs_on_smoke(path, extra, tmp_path, store_uri, monkeypatch):
    name = path.stem
    overrides = [f"experiment={name}", *extra, *_offline_inputs(name, extra, tmp_path, monkeypatch), *FAST]
    client = mlflow_client(store_uri)
    if not _is_sweep(path):
        result = run_job(tmp_path, store_uri, *overrides)
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        assert 0 <= run.data.metrics["test/acc"] <= 1
        return
    env = cli_env()
    command = [sys.executable, "-m", "trainwise", "train", *overrides, "profile=smoke", f"tracking.uri={store_uri}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    ids = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(ids, "tags.`trainwise.role` = 'sweep'")
    jobs = client.search_runs(ids, "tags.`trainwise.role` = 'job'")
    assert parent.info.status == "FINISHED" and jobs
    assert all(job.info.status == "FINISHED" for job in jobs)


def test_every_experiment_file_is_found():
    """The glob above is what makes a new experiment covered: it must see the shipped files."""
    assert {p.stem for p in EXPERIMENTS} >= {"compare", "data_efficiency", "mnist_mlp_scratch"}


@pytest.mark.parametrize("fraction", [0.01, 0.02, 0.05, 0.2, 1.0])
def test_data_efficiency_counts_validation_images_in_the_labelled_budget(fraction):
    """What its runs log as data.train_size and data.val_size at each size: no run selects its checkpoint on more
    validation images than it trains on, and the budget is the fraction of the 1,294 labelled digits."""
    from trainwise.data import build_datamodule

    cfg = compose_config("experiment=data_efficiency", f"dataset.train_fraction={fraction}")
    assert cfg.dataset.val_from_labelled and cfg.tuning.enabled and cfg.tuning.train_fraction == 1.0
    sizes = build_datamodule(cfg.dataset, seed=0).sizes()
    assert sizes["val"] <= sizes["train"]
    assert abs(sizes["train"] + sizes["val"] - fraction * 1294) <= 10  # one image per class of rounding
    assert (sizes["val"] > 0) == (fraction >= 0.2)  # below, too few labels for a validation split
