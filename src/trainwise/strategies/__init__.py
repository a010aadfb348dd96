"""The strategies: what each one trains, from which weights, on which data. The strategy config files carry the
decisions as data and `rules.py` applies them; `freeze.py`, `unfreeze.py` and `pretrained.py` hold the fine-tuning
machinery."""

from trainwise.strategies.rules import (
    FOUNDATION_KEYS,
    backbone_lr_mult,
    caches_features,
    effective_config,
    foundation_config,
    foundation_facts,
    foundation_hash,
    optimizer_groups,
    training_data,
    unfreeze_callback,
    uses_pretrained,
)

__all__ = [
    "FOUNDATION_KEYS",
    "backbone_lr_mult",
    "caches_features",
    "effective_config",
    "foundation_config",
    "foundation_facts",
    "foundation_hash",
    "optimizer_groups",
    "training_data",
    "unfreeze_callback",
    "uses_pretrained",
]
