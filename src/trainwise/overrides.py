"""Check `trainwise train` overrides before anything runs, so a typo ends in one clear line (exit 2)
instead of a Hydra traceback, or a sweep that fails job after job."""

from __future__ import annotations

import difflib
import re

from trainwise.errors import UserError

# Hydra command-line flags (not overrides); those followed by a value take the next argument.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd",
                     "--experimental-rerun", "--info", "-i"}  # fmt: skip
_FLAGS_THAT_SHOW_HELP = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc", "--info", "-i"}


def split_args(args: list[str]) -> tuple[list[str], dict[str, str | None]]:
    overrides, flags, i = [], {}, 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and "=" not in arg:
            takes_value = arg in _FLAGS_WITH_VALUE and i + 1 < len(args) and not args[i + 1].startswith("-")
            flags[arg] = args[i + 1] if takes_value else None
            i += 2 if takes_value else 1
            continue
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            flags[name] = value
        else:
            overrides.append(arg)
        i += 1
    return overrides, flags


def check_overrides(args: list[str]) -> None:
    """Compose the config for each value of each swept choice and run trainwise's value checks."""
    overrides, flags = split_args(args)
    if _FLAGS_THAT_SHOW_HELP & flags.keys():
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from trainwise.app import register_experiments
    from trainwise.config import validate
    from trainwise.paths import conf_dir

    register_experiments()
    extra_dir = flags.get("--config-dir") or flags.get("-cd")
    search = [f"hydra.searchpath=[file://{extra_dir}]"] if extra_dir else []
    try:
        variants = _variants(overrides)
    except HydraException as err:
        raise UserError(_one_line(str(err))) from None
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        for variant in variants:
            try:
                cfg = compose(config_name=flags.get("--config-name") or "train", overrides=search + variant)
            except MissingConfigException as err:
                raise UserError(_missing_option(err)) from None
            except (HydraException, OmegaConfBaseException) as err:
                raise UserError(_one_line(str(err))) from None
            validate(cfg)
    GlobalHydra.instance().clear()


def _variants(overrides: list[str]) -> list[list[str]]:
    """Each choice of a sweep paired with the first choice of the others; ranges and intervals are left to
    the sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed, sweeps = [], []
    for override in parsed:
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif isinstance(override.value(), ChoiceSweep) and not override.is_hydra_override():
            key = override.get_key_element()
            sweeps.append([f"{key}={v}" for v in override.sweep_string_iterator()])
    if not sweeps:
        return [fixed]
    firsts = [choices[0] for choices in sweeps]
    variants = [fixed + firsts]
    for i, choices in enumerate(sweeps):
        for choice in choices[1:]:
            variants.append(fixed + firsts[:i] + [choice] + firsts[i + 1 :])
    return variants


def _missing_option(err) -> str:
    text = str(err)
    match = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if not match:
        return _one_line(text)
    group, name = match.groups()
    options = list(getattr(err, "options", None) or [])
    close = difflib.get_close_matches(name, options, n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return f"{group}={name} is not an option of '{group}'; choose one of: {', '.join(options)}.{hint}"


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines)[:500] if lines else "invalid overrides"
