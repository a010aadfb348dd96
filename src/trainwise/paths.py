"""Where trainwise finds its config and keeps its caches, for a wheel install and a source checkout alike."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _shipped(name: str) -> Path:
    # A wheel holds conf/ and experiments/ inside the package; a source checkout (editable install) holds
    # them at the repository's top level, two folders above src/trainwise.
    inside = _PACKAGE_DIR / name
    return inside if inside.is_dir() else _PACKAGE_DIR.parent.parent / name


def conf_dir() -> Path:
    return _shipped("conf")


def experiments_dir() -> Path:
    return _shipped("experiments")


def source_root() -> Path | None:
    """The source checkout the package runs from, if any (for the git commit logged with each run)."""
    root = _PACKAGE_DIR.parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def cache_dir(configured: str | None = None) -> Path:
    """Generated data and locks: the configured folder, else $TRAINWISE_CACHE, else ~/.cache/trainwise."""
    path = configured or os.environ.get("TRAINWISE_CACHE") or "~/.cache/trainwise"
    return Path(path).expanduser()
