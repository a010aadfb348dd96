"""Which code and which package versions produced a run (tags for reproduce)."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata

from trainwise.paths import source_root

_PACKAGES = ("trainwise", "torch", "pytorch-lightning", "hydra-core", "omegaconf", "mlflow", "timm", "torchmetrics")


@lru_cache(maxsize=1)
def code_and_versions() -> dict[str, str]:
    tags: dict[str, str] = {}
    for package in _PACKAGES:
        try:
            tags[f"trainwise.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    root = source_root()
    if root is not None:
        try:
            commit = _git(root, "rev-parse", "HEAD")
            dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
            tags["mlflow.source.git.commit"] = commit
            tags["trainwise.git_dirty"] = str(dirty).lower()
        except (OSError, subprocess.CalledProcessError):
            pass
    return tags


def _git(root, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()
