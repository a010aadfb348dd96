"""Rebuild a run's config from what MLflow logged, for `resume` and `reproduce`.

A logged config is data, not code: it may come from someone else's store, and Hydra instantiates every nested
`_target_` under a node it is given (an optimizer's `weight_decay: {_target_: torch.hub.load, source: local}`
would import and run any hubconf.py). So each `_target_`, at any depth, must be one of the exact callables
trainwise's own configs name, unless the user says they trust the run's author.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainwise.errors import UserError

# Every `_target_` in conf/ and experiments/ (tests/test_trust.py checks that this stays so), plus the other
# optimizer classes of torch.optim (docs/configuration.md: `optimizer._target_` takes any). Exact names, not
# namespaces: torch alone holds torch.hub.load and torch.utils.cpp_extension.load_inline.
ALLOWED_TARGETS = frozenset(
    {
        "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD", "trainwise.sweep.SweepCallback",
        "hydra_plugins.trainwise_optuna.sweeper.TrainwiseOptunaSweeper",
        "hydra_plugins.trainwise_slurm.launcher.TrainwiseSlurmLauncher",
        "hydra_plugins.trainwise_local.launcher.TrainwiseLocalLauncher",
    }
)  # fmt: skip


def allowed_target(target) -> bool:
    if not isinstance(target, str):
        return False
    if target in ALLOWED_TARGETS:
        return True
    name = target.removeprefix("torch.optim.")
    if name == target or not name.isidentifier():
        return False
    import torch

    candidate = getattr(torch.optim, name, None)
    return isinstance(candidate, type) and issubclass(candidate, torch.optim.Optimizer)


def find_run(store, run_id: str):
    try:
        return store.client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MlflowException for a missing run, or a malformed id
        raise UserError(f"run {run_id!r} does not exist in {store.uri}") from None


def untrusted_targets(node, path: str = "") -> list[str]:
    """Dotted keys whose `_target_` is not an allowed callable (an interpolation is not one either)."""
    found = []
    if isinstance(node, dict):
        if "_target_" in node and not allowed_target(node["_target_"]):
            found.append(f"{path or '<root>'}._target_={node['_target_']}")
        for key, value in node.items():
            found += untrusted_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += untrusted_targets(value, f"{path}[{i}]")
    return found


def logged_config(store, run_id: str, trust: bool) -> DictConfig:
    """The resolved config a run logged, merged over today's defaults (keys added since then get defaults)."""
    from mlflow.artifacts import download_artifacts

    find_run(store, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_artifacts(
                run_id=run_id, artifact_path="config/config.yaml", dst_path=tmp, tracking_uri=store.uri
            )
        except Exception:  # noqa: BLE001
            raise UserError(
                f"run {run_id} has no config/config.yaml artifact; it was not recorded by trainwise"
            ) from None
        logged = OmegaConf.load(Path(path))
    bad = untrusted_targets(OmegaConf.to_container(logged))
    if bad and not trust:
        raise UserError(
            f"run {run_id}'s logged config would run code trainwise's configs never name ({', '.join(bad)}); "
            "if you trust its author, pass --trust (reproduce) or trust=true (resume)"
        )
    defaults = _defaults()
    OmegaConf.set_struct(defaults, False)  # the logged strategy may carry keys today's default strategy lacks
    return OmegaConf.merge(defaults, logged)


def _defaults() -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from trainwise.paths import conf_dir

    if GlobalHydra.instance().is_initialized():
        from hydra.compose import compose as compose_in_app

        return compose_in_app(config_name="train")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train")
