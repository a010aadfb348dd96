"""Config helpers: flattening for MLflow params, hashing for run identity, and value checks."""

from __future__ import annotations

import hashlib
import json
import re

from omegaconf import DictConfig, OmegaConf

from trainwise.errors import UserError

# Keys that change where or how fast data loads, not what a run computes: left out of identity hashes.
# (`root` stays in: for imagefolder the folder *is* the data.)
_NOT_IDENTITY = {"num_workers", "cache_dir", "download", "device_resident", "last_checkpoint_every_s"}


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


def identity(cfg: DictConfig) -> dict:
    """The config keys that define what a run computes (not where it is tracked or how it was launched)."""
    # hparams_search: the search space and the trial's id (the trial's own values are in the keys it set)
    launch_only = ("tracking", "resume", "force_resume", "sweep", "trust", "report", "hparams_search")
    return {k: v for k, v in to_container(cfg).items() if k not in launch_only}


def setting(cfg: DictConfig) -> dict:
    """What a run computes apart from its randomness: `identity` without `seed` and `foundation.seed`. Runs that
    differ only in those are seeds of one setting, and the report pools them into one row."""
    tree = identity(cfg)
    tree.pop("seed", None)
    if isinstance(tree.get("foundation"), dict):
        tree["foundation"] = {k: v for k, v in tree["foundation"].items() if k != "seed"}
    return tree


def config_hash(tree: dict) -> str:
    """A short, stable hash of what a config computes (data-loading knobs excluded)."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in sorted(node.items()) if k not in _NOT_IDENTITY}
        return node

    payload = json.dumps(strip(tree), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def validate_before_run(cfg: DictConfig) -> None:
    """Checks that need torch/timm (so not in the CLI's quick check), done before any MLflow run exists."""
    from pathlib import Path

    from trainwise.models import check_model_name

    check_model_name(cfg.model.name)
    data = cfg[cfg.strategy.data]
    if data.name == "imagefolder" and not (data.get("root") and Path(str(data.root)).expanduser().is_dir()):
        raise UserError(
            f"{cfg.strategy.data}.root={data.get('root')!r} is not a folder; point it at a folder with one subfolder "
            "of images per class (or train/ and val/ folders holding them)"
        )
    pretrained = str(cfg.strategy.get("pretrained", "auto"))
    if cfg.strategy.get("weights") == "pretrained" and not cfg.get("resume"):
        is_uri = pretrained.startswith(("runs:/", "models:/")) or "://" in pretrained
        if pretrained not in ("auto", "timm") and not is_uri and not Path(pretrained).expanduser().is_file():
            raise UserError(
                f"strategy.pretrained={pretrained!r}: no such file; give a .ckpt/.pt/.pth file, runs:/<run_id>/<path> "
                "or auto"
            )


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
        if str(data.get("device_resident", "auto")).lower() not in ("auto", "true", "false"):
            raise UserError(f"{slot}.device_resident={data.device_resident!r} must be auto, true or false")
        for key in ("memory_budget_mb", "num_workers"):
            value = data.get(key, "auto")
            if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise UserError(f"{slot}.{key}={value!r} must be auto or a non-negative integer")
    for slot in ("dataset", "source"):
        augment_pad(cfg[slot])
    for key in ("max_epochs",):
        value = cfg.trainer.get(key)
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"trainer.{key}={value!r} must be a positive integer")
    lr = cfg.optimizer.get("lr")
    if lr != "auto" and (not isinstance(lr, (int, float)) or lr <= 0):
        raise UserError(f"optimizer.lr={lr!r} must be a positive number or auto (the LR finder), e.g. 0.001")
    if lr == "auto" and str(cfg.accelerator.get("strategy", "auto")) == "ddp":
        from trainwise.lr_find import UNDER_DDP

        raise UserError(UNDER_DDP)
    tuning = cfg.get("tuning")
    if tuning is not None and tuning.enabled:
        for key in ("lr", "backbone_lr_mult"):
            values = tuning.get(key)
            if not OmegaConf.is_list(values) or not values or not all(_positive(v) for v in values):
                raise UserError(f"tuning.{key}={values!r} must be a list of positive numbers, e.g. [0.001,0.01]")
    accel = cfg.accelerator
    if str(accel.get("channels_last", "auto")) not in ("auto", "True", "False"):
        raise UserError(f"accelerator.channels_last={accel.channels_last!r} must be auto, true or false")
    if not isinstance(accel.get("compile", False), bool):
        raise UserError(f"accelerator.compile={accel.compile!r} must be true or false")
    if str(cfg.accelerator.get("strategy", "auto")) == "ddp" and cfg.strategy.get("unfreeze_at_epoch") is not None:
        raise UserError(
            f"strategy.unfreeze_at_epoch={cfg.strategy.unfreeze_at_epoch} cannot run under accelerator="
            f"{cfg.accelerator.name}: DDP fixes the set of trained parameters when it starts; run the two stages as "
            "two runs (strategy=linear_probe, then strategy=finetune from its checkpoint)"
        )
    from trainwise.strategies.freeze import parse_freeze

    parse_freeze(cfg.strategy.get("freeze", "none"))


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


AUGMENTS = ("none", "crop_flip", "imagenet")  # see trainwise.data.augment


def augment_name(data_cfg) -> str:
    """dataset.augment, checked here (without torch) so that a bad value stops a run before it starts."""
    name = str(data_cfg.get("augment", "none")).lower()
    if name == "null":
        return "none"
    if name not in AUGMENTS:
        raise UserError(f"dataset.augment={name!r} is not valid; choose one of: {', '.join(AUGMENTS)}")
    return name


def augment_pad(data_cfg) -> int | None:
    """The crop padding when a dataset node asks for crop_flip, None otherwise."""
    if augment_name(data_cfg) != "crop_flip":
        return None
    pad = data_cfg.get("augment_pad", 4)
    if not isinstance(pad, int) or pad < 0:
        raise UserError(f"dataset.augment_pad={pad!r} must be a non-negative integer (pixels)")
    return pad


_SECRET_WORDS = ("TOKEN", "PASSWORD", "PASSWD", "SECRET", "KEY")
MASK = "***"
# scheme://user:password@host (the user may be empty: https://:token@host).
_URI_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?P<at>@)")
# `name=value`, `name: value`, `'name': 'value'` and `name="va lue"` whose name names a secret, anywhere in a
# line; not exception names (`KeyError: 'x'` says which key was missing, and is no secret).
_NAMED_SECRET = re.compile(
    r"(?P<name>[\w.-]*(?:token|password|passwd|secret|key)(?![\w-]*(?:Error|Exception|Warning|Interrupt)\b)[\w.-]*)"
    r"(?P<sep>['\"]?\s*[=:]\s*)"
    r"(?P<value>'[^'\n]*'|\"[^\"\n]*\"|[^\s,;)\]}'\"]+)",
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(r"\b(?P<scheme>Bearer|Basic|Token)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})")
# Environment values too short or too common to be a secret worth masking (they would mask unrelated text).
_NOT_SECRET_VALUES = {"true", "false", "none", "null", "yes", "no", "on", "off"}


def _names_secret(key: str) -> bool:
    return any(word in key.upper() for word in _SECRET_WORDS)


def mask_secrets(node, key: str = ""):
    """A copy of a config tree (or text) safe to log: everything under a key naming a secret (at any depth; the
    structure stays, so a logged config still merges over the defaults), and secrets inside strings (see
    mask_text), replaced by ***."""
    if _names_secret(key):
        return _mask_all(node)
    if isinstance(node, dict):
        return {k: mask_secrets(v, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [mask_secrets(v) for v in node]
    if isinstance(node, str):
        return mask_text(node)
    return node


def _mask_all(node):
    if isinstance(node, dict):
        return {k: _mask_all(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_all(v) for v in node]
    return node if node in (None, "") else MASK


def environ() -> dict[str, str]:
    """A copy of os.environ. Reading os.environ item by item raises KeyError when another thread removes a variable
    meanwhile (MLflow's telemetry thread unsets _MLFLOW_TELEMETRY_SESSION_ID): that failed jobs of a parallel
    sweep while they logged their config. Copied again until a copy is whole."""
    import os

    while True:
        try:
            return dict(os.environ)
        except KeyError:
            continue


def mask_text(text: str) -> str:
    """Free text (an override, an error message, a whole traceback) safe to log: passwords inside URIs,
    `name=value` / `name: value` pairs whose name names a secret, Bearer/Basic credentials, and the value of every
    environment variable whose name contains TOKEN, PASSWORD, SECRET or KEY (MLFLOW_TRACKING_PASSWORD, ...)
    wherever it appears, replaced by ***."""
    text = str(text)
    # Longest first, so that a value containing another is masked whole.
    values = sorted((v for k, v in environ().items() if _names_secret(k) and _may_be_secret(v)), key=len, reverse=True)
    for value in values:
        text = text.replace(value, MASK)
    text = _URI_PASSWORD.sub(lambda m: m.group("head") + MASK + m.group("at"), text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group('scheme')} {MASK}", text)
    return _NAMED_SECRET.sub(_mask_named, text)


def _may_be_secret(value: str) -> bool:
    """Too short, a yes/no word, or an existing path (GNUPGHOME-like variables, a key *file*): masking those would
    blank unrelated text, such as every data path under /root in a logged config."""
    import os

    return len(value) >= 4 and value.lower() not in _NOT_SECRET_VALUES and not os.path.exists(value)


def _mask_named(match: re.Match) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return match.group("name") + match.group("sep") + (f"{quote}{MASK}{quote}" if value.strip("'\"") else value)
