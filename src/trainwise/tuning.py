"""`tuning.enabled=true`: each strategy gets its own learning rate, chosen on validation by a search recorded in
MLflow, so that a comparison of strategies measures the strategies and not whose learning rate was tuned.

Before a job trains, the search for its setting (its whole config apart from the seed, the learning rate and
the backbone multiplier) is looked up in the store; if none has finished, it runs now: one run per point of the
grid `tuning.lr` × `tuning.backbone_lr_mult`, the same grid and budget for every strategy (points that cannot
change a run, such as a multiplier for a frozen backbone, run once), at `tuning.train_fraction` with seed
`tuning.seed`. The point with the best `val/acc_best` wins (ties: the first in the grid). The search is an MLflow
run (role `tuning`, nested under the sweep) holding its trials as nested runs and the choice as params; every job
of that setting, any seed or data size, then trains with the choice and names the search in its
`trainwise.tuning_run` tag. Hydra's sweepers (basic, Optuna) search one config space for a whole sweep; this is
the per-strategy search inside one, which none of them does.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import replace

from omegaconf import DictConfig, OmegaConf, open_dict

from trainwise.config import config_hash, setting
from trainwise.errors import Interrupted, UserError

log = logging.getLogger("trainwise")

TUNING_HASH_TAG = "trainwise.tuning_hash"
CHOSEN = ("optimizer.lr", "strategy.backbone_lr_mult")  # what a search chooses, as dotted config keys


def tuning_key(cfg: DictConfig) -> str:
    """The setting a search serves: the config apart from the seed and what the search chooses (and the data
    fraction when the search runs at a fixed one)."""
    tree = setting(cfg)
    tree["optimizer"] = {k: v for k, v in tree["optimizer"].items() if k != "lr"}
    tree["strategy"] = {k: v for k, v in tree["strategy"].items() if k != "backbone_lr_mult"}
    if cfg.tuning.train_fraction is not None:
        tree["dataset"] = {k: v for k, v in tree["dataset"].items() if k != "train_fraction"}
    return config_hash(tree)


def grid(cfg: DictConfig) -> list[dict[str, float]]:
    """The search's points for this strategy, in order; a multiplier for a frozen backbone changes nothing, so
    there the points differ in the learning rate only."""
    frozen = str(cfg.strategy.get("freeze", "none")) == "backbone" and cfg.strategy.get("unfreeze_at_epoch") is None
    mults = [None] if frozen else list(cfg.tuning.backbone_lr_mult)
    points = []
    for lr, mult in itertools.product(cfg.tuning.lr, mults):
        point = {"optimizer.lr": float(lr)}
        if mult is not None:
            point["strategy.backbone_lr_mult"] = float(mult)
        points.append(point)
    return points


def with_choice(cfg: DictConfig, choice: dict[str, float]) -> DictConfig:
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in choice.items():
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def tuned_config(cfg: DictConfig, ctx, store, world, foundation) -> DictConfig:
    """`cfg` with the learning rate (and backbone multiplier) its setting's search chose, running the search
    first if the store holds none (one job at a time per setting: parallel jobs wait for it and reuse it)."""
    key = tuning_key(cfg)
    with store.lock(f"tuning-{key}"):
        found = _find(store, cfg, key)
        if found is None:
            if world.distributed:
                raise UserError(
                    "tuning.enabled=true: no finished search for this setting, and a DDP job does not run one; run "
                    "the same command once without DDP first, or set tuning.enabled=false"
                )
            found = _search(cfg, ctx, store, foundation, key)
    choice = {k: float(found.data.params[f"chosen.{k}"]) for k in CHOSEN if f"chosen.{k}" in found.data.params}
    ctx.extra_tags["trainwise.tuning_run"] = found.info.run_id
    return with_choice(cfg, choice)


def _find(store, cfg: DictConfig, key: str):
    runs = store.client.search_runs(
        [store.experiment_id(cfg.tracking.experiment)],
        f"tags.`{TUNING_HASH_TAG}` = '{key}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _search(cfg: DictConfig, ctx, store, foundation, key: str):
    from trainwise.context import Plan
    from trainwise.train import train_and_log

    points = grid(cfg)
    fraction = cfg.tuning.train_fraction if cfg.tuning.train_fraction is not None else cfg.dataset.train_fraction
    print(
        f"Tuning {cfg.strategy.name}: {len(points)} runs (learning rates {list(cfg.tuning.lr)}"
        + (f" x backbone multipliers {list(cfg.tuning.backbone_lr_mult)}" if "strategy.backbone_lr_mult" in points[0]
           else "")
        + f") at train_fraction {fraction}, seed {cfg.tuning.seed}, chosen by val/acc_best.",
        flush=True,
    )  # fmt: skip
    tags = {"trainwise.role": "tuning", TUNING_HASH_TAG: key, "trainwise.strategy": cfg.strategy.name}
    if ctx.parent_run_id:
        tags["mlflow.parentRunId"] = ctx.parent_run_id
    experiment_id = store.experiment_id(cfg.tracking.experiment)
    search = store.client.create_run(experiment_id, run_name=f"tune-{cfg.strategy.name}", tags=tags)
    search_id = search.info.run_id
    store.client.log_param(search_id, "tuning.points", len(points))
    store.client.log_param(search_id, "tuning.train_fraction", fraction)
    store.client.log_param(search_id, "tuning.seed", cfg.tuning.seed)
    trials, status = [], "FAILED"
    try:
        for number, point in enumerate(points):
            trial_cfg = with_choice(cfg, point | {"seed": cfg.tuning.seed, "dataset.train_fraction": fraction})
            with open_dict(trial_cfg):
                trial_cfg.tuning.enabled = False
            trial_ctx = replace(
                ctx,
                job_dir=ctx.job_dir / "tuning" / f"trial-{number}",
                parent_run_id=search_id,
                extra_tags={**ctx.extra_tags, "trainwise.role": "tuning_trial"},
                callbacks=[],
                test=False,  # chosen on validation; a test score here would only invite choosing on it
            )
            result = train_and_log(trial_cfg, trial_ctx, store, plan=Plan(foundation=foundation))
            score = result.metrics.get("val/acc_best")
            if score is None:
                raise UserError(
                    f"tuning.enabled=true: at train_fraction {fraction} the labelled budget has no validation "
                    "split to choose on; set tuning.train_fraction to a larger size (e.g. 1.0)"
                )
            trials.append({"trial": number, **point, "val/acc_best": score, "run_id": result.run_id})
        best = max(trials, key=lambda t: t["val/acc_best"])  # max keeps the first of equal scores
        store.client.log_batch(search_id, params=_params({f"chosen.{k}": best[k] for k in CHOSEN if k in best}))
        store.client.log_metric(search_id, "best/val_acc", best["val/acc_best"])
        store.client.log_text(search_id, json.dumps(trials, indent=1), "tuning/trials.json")
        chosen = ", ".join(f"{k}={best[k]:g}" for k in CHOSEN if k in best)
        print(f"Tuned {cfg.strategy.name}: {chosen} (val/acc_best {best['val/acc_best']:.4f}).", flush=True)
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted):
        status = "KILLED"
        raise
    finally:
        store.client.set_terminated(search_id, status)
    return store.client.get_run(search_id)


def _params(values: dict) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)) for k, v in values.items()]
