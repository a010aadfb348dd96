"""cli_help_seconds, cfg_job_seconds and demo_seconds: the commands a user types, timed as subprocesses."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import BIN, cli_env


def cli_seconds(tmp: Path) -> dict[str, float]:
    """Wall time of `trainwise --help` and `trainwise train --cfg job` (subprocesses, median of 3)."""
    exe = str(BIN / "trainwise")

    def wall(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run([exe, *args], cwd=tmp, env=cli_env(), check=True, capture_output=True)
        return time.perf_counter() - started

    return {
        "help": statistics.median(wall("--help") for _ in range(3)),
        "cfg_job": statistics.median(wall("train", "--cfg", "job") for _ in range(3)),
    }


def glyphs_cached() -> bool:
    from trainwise.paths import cache_dir

    return any((cache_dir() / "glyphs").glob("glyphs_*_n1000_s0_px8.npz"))


def demo_seconds(tmp: Path) -> dict[str, float]:
    """`trainwise train experiment=compare` end to end in an empty folder (its own mlflow.db there)."""
    folder = tmp / "demo"
    folder.mkdir()
    warm = glyphs_cached()
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "trainwise"), "train", "experiment=compare"],
        cwd=folder,
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    return {"seconds": seconds, "glyphs_cache_warm": warm, "exit_code": done.returncode}
