"""What a training run records in MLflow besides its metrics: the run itself (name, tags), the resolved config,
the data it trained on, the test confusion matrix, and the line printed when it finishes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from trainwise.config import config_hash, flatten, identity, mask_secrets, mask_text, setting, to_container

if TYPE_CHECKING:
    from trainwise.context import JobContext, Plan


def open_run(cfg: DictConfig, ctx: JobContext, store, world, plan: Plan):
    """Rank 0's MLflow run (new, or the one a resume continues); the other ranks' stand-in logs nothing."""
    from trainwise import strategies
    from trainwise.tracking.run import QuietRun, TrackedRun

    if not world.is_global_zero:
        return QuietRun(plan.run_id)
    data_name = strategies.training_data(cfg).name
    reopen = plan.resume.run_id if plan.resume else None
    experiment_id = store.experiment_id(cfg.tracking.experiment)
    tags = run_tags(cfg, data_name, ctx)
    sample_every = float(cfg.tracking.get("system_metrics_every_s") or 0) or None
    return TrackedRun(
        store, experiment_id, run_name(cfg, data_name), tags, reopen=reopen, local_dir=ctx.job_dir,
        system_metrics_s=sample_every,
    )  # fmt: skip


def run_name(cfg: DictConfig, data_name: str) -> str:
    return f"{cfg.strategy.name}-{cfg.model.name}-{data_name}"


def run_tags(cfg: DictConfig, data_name: str, ctx: JobContext) -> dict[str, str]:
    from trainwise import strategies
    from trainwise.provenance import code_and_versions

    tags = {
        "trainwise.strategy": cfg.strategy.name,
        "trainwise.model": cfg.model.name,
        "trainwise.dataset": data_name,
        "trainwise.role": "job",
        "trainwise.config_hash": config_hash(identity(cfg)),
        "trainwise.setting": config_hash(setting(cfg)),  # the report's row: the config without its seeds
        "trainwise.job_dir": str(ctx.job_dir.resolve()),
        **_process_tags(),
        **code_and_versions(),
        **ctx.extra_tags,
    }
    if cfg.strategy.data == "source":
        tags["trainwise.foundation_hash"] = strategies.foundation_hash(cfg)
    if ctx.parent_run_id:
        tags["mlflow.parentRunId"] = ctx.parent_run_id
    return tags


def _process_tags() -> dict[str, str]:
    """Where the run's process lives (resume tells a RUNNING run whose process is gone from one still training),
    and the CPU threads torch computes with: a run's time depends on them (parallel jobs share the cores)."""
    import os
    import socket

    import torch

    return {
        "trainwise.host": socket.gethostname(),
        "trainwise.pid": str(os.getpid()),
        "trainwise.torch_threads": str(torch.get_num_threads()),
    }


def log_config(tracked, cfg: DictConfig, ctx: JobContext) -> None:
    """The whole resolved config as params and artifacts, secrets masked (see config.mask_secrets)."""
    tree = mask_secrets(to_container(cfg))
    tracked.log_params(flatten(tree))
    tracked.log_text(OmegaConf.to_yaml(OmegaConf.create(tree)), "config/config.yaml")
    overrides = [mask_text(o) for o in ctx.overrides]
    tracked.log_text(OmegaConf.to_yaml(OmegaConf.create(overrides)), "config/overrides.yaml")
    if ctx.hydra_yaml is not None and ctx.hydra_yaml.is_file():
        hydra_tree = mask_secrets(OmegaConf.to_container(OmegaConf.load(ctx.hydra_yaml)))
        tracked.log_text(OmegaConf.to_yaml(OmegaConf.create(hydra_tree)), "config/hydra.yaml")


def log_data(tracked, data_cfg: DictConfig, datamodule, steps_per_epoch: int) -> None:
    """The data's sizes as params, the model's input preprocessing (preprocess.*), where the images are kept (tag
    trainwise.data_storage), the data as an MLflow dataset input (name, source, content digest, sizes), and the
    classes with their per-split counts (`data/classes.json`)."""
    sizes = {f"data.{k}_size": v for k, v in datamodule.sizes().items()}
    # Every labelled image the run used: trained on, or selected its checkpoint on.
    sizes["data.labelled_size"] = sizes["data.train_size"] + sizes["data.val_size"]
    facts = {"data.num_classes": datamodule.num_classes, "data.steps_per_epoch": steps_per_epoch}
    skipped = getattr(datamodule, "skipped", [])
    facts["data.skipped_images"] = len(skipped)
    tracked.log_params(sizes | facts | datamodule.preprocess.params())
    if skipped:
        tracked.log_text("".join(f"{path}\n" for path in skipped), "data/skipped_images.txt")
    tracked.set_tags({"trainwise.data_storage": datamodule.storage})
    selection = "best val/acc" if datamodule.has_validation else "last epoch (no validation split: budget too small)"
    tracked.set_tags({"trainwise.selection": selection})
    source = {k: data_cfg.get(k) for k in ("name", "root", "generator_seed", "num_per_class") if data_cfg.get(k)}
    profile = datamodule.sizes() | {"num_classes": datamodule.num_classes}
    tracked.log_dataset(data_cfg.name, datamodule.digest(), source, profile, context="training")
    classes = {"classes": datamodule.data.class_names, "counts": datamodule.class_counts()}
    tracked.log_text(json.dumps(classes, indent=1), "data/classes.json")


def log_confusion_matrix(tracked, matrix, class_names: list[str], job_dir: Path) -> None:
    """plots/confusion_matrix.png (rows: true class, columns: predicted) and the counts as JSON."""
    from trainwise.report.plots import pyplot

    plt = pyplot()
    counts = matrix.cpu().numpy()
    size = min(12.0, 2.5 + 0.35 * len(class_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Blues")
    ticks = range(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title="Test confusion matrix")
    ax.set_xticklabels(class_names, fontsize=7, rotation=90)
    ax.set_yticklabels(class_names, fontsize=7)
    fig.tight_layout()
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / "confusion_matrix.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    tracked.log_artifact(path, "plots")
    tracked.log_text(json.dumps({"classes": class_names, "counts": counts.tolist()}), "plots/confusion_matrix.json")


def log_model(store, run_id: str, net, input_shape: tuple[int, int]) -> str:
    """The run's network as an MLflow Model (pytorch flavor, with a signature and an input example), a logged model
    named `model` of the run (the UI's "Logged models"): `mlflow.pytorch.load_model(<the returned models:/ URI>)`
    returns a network that maps a batch of images (N, C, H, W, floats in [0, 1]) to class scores. `net` holds the
    tested (best epoch's) weights."""
    import copy

    import mlflow.pytorch
    import torch
    from mlflow.models import Model, infer_signature

    from trainwise.tracking.store import tracking_env

    channels, size = input_shape
    model = copy.deepcopy(net).cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.rand(2, channels, size, size)
    with torch.no_grad():
        signature = infer_signature(example.numpy(), model(example).numpy())
    requirements = [f"torch=={torch.__version__.split('+')[0]}", "timm", "trainwise"]  # not inferred: that is slow
    experiment_id = store.client.get_run(run_id).info.experiment_id  # the logged model lives beside its run
    with tracking_env(store.uri, experiment_id):  # MLflow's log_model resolves the store from the environment
        return Model.log(
            artifact_path=None, name="model", flavor=mlflow.pytorch, run_id=run_id, pytorch_model=model,
            signature=signature,
            input_example=example.numpy(), pip_requirements=requirements,
        ).model_uri  # fmt: skip


def describe_run(cfg: DictConfig, plan, datamodule, metrics: dict[str, float], ctx) -> str:
    """The run's description (`mlflow.note.content`, its overview page in the MLflow UI): the strategy, where its
    weights came from, the data and its sizes, and the headline result, in markdown."""
    from trainwise import strategies

    data = strategies.training_data(cfg)
    sizes = datamodule.sizes()
    channels, size = datamodule.input_shape
    foundation = plan.foundation
    if foundation is not None:
        weights = f"the foundation run `{foundation.run_id}`" if foundation.run_id else f"`{foundation.source}`"
    else:
        weights = "random initialisation"
    tuned = " (chosen on validation by a search)" if "trainwise.tuning_run" in ctx.extra_tags else ""
    lines = [
        f"**{cfg.strategy.name}** of `{cfg.model.name}` on `{data.name}`: {sizes['train']:,} training and "
        f"{sizes['val']:,} validation images (input {channels}x{size}x{size}), {sizes['test']:,} test images. "
        f"Weights from {weights}; freeze: {cfg.strategy.get('freeze', 'none')}; learning rate "
        f"{cfg.optimizer.lr:g}{tuned}.",
    ]
    epochs = int(metrics.get("cost/epochs", 0))
    cost = f"{epochs} epochs, {metrics.get('cost/fit_seconds', 0.0):.1f} s of training"
    if "test/acc" in metrics:
        chosen = "the best validation epoch" if datamodule.has_validation else "the last epoch (no validation split)"
        lines.append(f"Result: test accuracy **{100 * metrics['test/acc']:.2f} %** ({chosen}), {cost}.")
    else:
        lines.append(f"A learning-rate search trial, not tested: best validation accuracy "
                     f"{100 * metrics.get('val/acc_best', float('nan')):.2f} %, {cost}.")  # fmt: skip
    return "\n\n".join(lines)


def print_finished(cfg: DictConfig, run_id: str, experiment_id: str, metrics: dict[str, float]) -> None:
    from trainwise.tracking.store import run_page_url

    if "test/acc" in metrics:
        result = f"test/acc {metrics['test/acc']:.4f}  test/loss {metrics['test/loss']:.4f}"
    else:  # a learning-rate search's trial: never tested
        result = f"val/acc_best {metrics.get('val/acc_best', float('nan')):.4f}"
    print(
        f"{cfg.strategy.name}: {result}  fit {metrics['cost/fit_seconds']:.1f}s  (MLflow run {run_id})\n"
        f"  See the run: `make ui` or `trainwise ui`, then {run_page_url(experiment_id, run_id)}",
        flush=True,
    )
