"""Config helpers: flattening for MLflow params, hashing for run identity, and value checks."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from trainwise.errors import UserError

# Keys that change where or how fast data loads, not what a run computes: left out of identity hashes.
_NOT_IDENTITY = {"num_workers", "cache_dir", "root", "download"}


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}; lists stay whole values."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_hash(tree: dict) -> str:
    """A short, stable hash of what a config computes (data-loading knobs excluded)."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in sorted(node.items()) if k not in _NOT_IDENTITY}
        return node

    payload = json.dumps(strip(tree), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def validate(cfg: DictConfig) -> None:
    """Checks of values Hydra cannot know are wrong; each failure names the key and what would be valid."""
    for slot in ("dataset", "source"):
        data = cfg[slot]
        fraction = data.get("train_fraction", 1.0)
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise UserError(f"{slot}.train_fraction={fraction!r} must be a number in (0, 1]")
        for key in ("batch_size", "image_size"):
            value = data.get(key)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"{slot}.{key}={value!r} must be a positive integer")
    for key in ("max_epochs",):
        value = cfg.trainer.get(key)
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"trainer.{key}={value!r} must be a positive integer")
    lr = cfg.optimizer.get("lr")
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise UserError(f"optimizer.lr={lr!r} must be a positive number, e.g. optimizer.lr=0.001")
    from trainwise.strategies.freeze import parse_freeze

    parse_freeze(cfg.strategy.get("freeze", "none"))
