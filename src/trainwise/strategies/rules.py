"""The strategies' rules, in one place.

| strategy | weights start from        | what trains                         | data slot | budget, LR, seed        |
|----------|---------------------------|-------------------------------------|-----------|-------------------------|
| scratch  | random init               | everything                          | dataset   | trainer, optimizer, seed |
| full     | random init               | everything                          | source    | the `foundation` node    |
| finetune | `strategy.pretrained`     | head + what `strategy.freeze` leaves | dataset   | trainer, optimizer, seed |

The strategy config files carry these decisions as data (`strategy.data`, `strategy.weights`,
`strategy.freeze`); this package applies them. Nothing else in trainwise branches on a strategy's name.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from trainwise.config import config_hash, to_container
from trainwise.paths import conf_dir

# What identifies a foundation: a fine-tune with pretrained=auto reuses a full run only if all of these match,
# and the facts `foundation_facts` derives from the config (what the keys alone do not say).
FOUNDATION_KEYS = ("model", "source", "foundation", "trainer", "min_train_steps")


def effective_config(cfg: DictConfig) -> DictConfig:
    """The config a run really trains with: a `full` run takes the foundation's budget, optimizer, scheduler
    and seed, because one foundation serves many fine-tunes (other seeds, data fractions, learning rates)."""
    if cfg.strategy.data != "source":
        return cfg
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.trainer.max_epochs = cfg.foundation.max_epochs
    cfg.optimizer = cfg.foundation.optimizer
    cfg.scheduler = cfg.foundation.scheduler
    cfg.seed = cfg.foundation.seed
    return cfg


def foundation_config(cfg: DictConfig) -> DictConfig:
    """The `full` run that a fine-tune with pretrained=auto needs: same config, strategy=full."""
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.strategy = OmegaConf.load(conf_dir() / "strategy" / "full.yaml")
    cfg.resume = None
    return effective_config(cfg)


def foundation_hash(cfg: DictConfig) -> str:
    """Hash of exactly the keys that define the foundation a config trains (or needs)."""
    full = effective_config(cfg) if cfg.strategy.data == "source" else foundation_config(cfg)
    tree = to_container(full)
    return config_hash({key: tree[key] for key in FOUNDATION_KEYS} | {"facts": foundation_facts(full)})


def foundation_facts(cfg: DictConfig) -> dict:
    """What else changes the weights a `full` run trains: the glyph generator's version (a new version draws
    other images for the same config), the precision it resolves to (`auto` is bf16-mixed on a GPU, 32 on a
    CPU), and the number of DDP ranks (the global batch is dataset.batch_size per rank)."""
    from lightning_fabric.connector import _convert_precision_to_unified_args

    from trainwise import accelerator, distributed

    facts = {
        "precision": str(_convert_precision_to_unified_args(accelerator.precision(cfg.accelerator))),  # "32"="32-true"
        "ranks": 1,
    }
    if distributed.uses_ddp(cfg.accelerator):
        # devices=auto counts this node's GPUs, as the job itself does when it starts its ranks.
        facts["ranks"] = distributed._devices_per_node(cfg.accelerator) * int(cfg.accelerator.get("num_nodes", 1))
    if cfg.source.name == "glyphs":
        from trainwise.data.glyphs import GLYPHS_VERSION

        facts["glyphs_version"] = GLYPHS_VERSION
    return facts


def training_data(cfg: DictConfig) -> DictConfig:
    """The dataset node this strategy trains on (`dataset` or `source`)."""
    return cfg[cfg.strategy.data]


def uses_pretrained(cfg: DictConfig) -> bool:
    return cfg.strategy.weights == "pretrained"


def caches_features(cfg: DictConfig) -> bool:
    """Head-only training (frozen backbone, never unfrozen) on features computed once, unless
    strategy.cache_features=false or the training data is augmented (each step's inputs, so their features,
    differ: a cache would train on unaugmented images)."""
    head_only = cfg.strategy.get("freeze") == "backbone" and cfg.strategy.get("unfreeze_at_epoch") is None
    from trainwise.config import augment_name

    augmented = augment_name(training_data(cfg)) != "none"
    return head_only and not augmented and str(cfg.strategy.get("cache_features", "auto")) != "False"


def unfreeze_callback(cfg: DictConfig):
    """Lightning callback for strategy.unfreeze_at_epoch (gradual unfreezing, LP-FT), or None."""
    at_epoch = cfg.strategy.get("unfreeze_at_epoch")
    if at_epoch is None:
        return None
    from trainwise.strategies.unfreeze import UnfreezeBackbone

    return UnfreezeBackbone(at_epoch, cfg.optimizer.lr * backbone_lr_mult(cfg))


def optimizer_groups(cfg: DictConfig, net) -> list[dict]:
    """The optimizer's parameter groups for this strategy's LR knobs (backbone_lr_mult, layer_decay)."""
    from trainwise.strategies.freeze import param_groups

    return param_groups(
        net,
        cfg.optimizer.lr,
        backbone_lr_mult(cfg),
        layer_decay=cfg.strategy.get("layer_decay"),
        weight_decay=cfg.optimizer.get("weight_decay", 0.0),
    )


def backbone_lr_mult(cfg: DictConfig) -> float:
    return float(cfg.strategy.get("backbone_lr_mult", 1.0))
