"""What the tests share besides fixtures: composed configs, in-process runs, MLflow clients, a real
`mlflow server`, a terminal-like stdout, and the environment for CLI subprocesses."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from trainwise.paths import conf_dir


def cli_env(*drop: str) -> dict[str, str]:
    """This process's environment for a `trainwise` subprocess, without MLFLOW_TRACKING_URI (a test names its
    store on the command line) and without the variables in `drop`."""
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", *drop)}


def compose_config(*overrides: str, return_hydra_config: bool = False):
    from trainwise.app import register_experiments

    register_experiments()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=return_hydra_config)


def mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


class Terminal(io.StringIO):
    """A captured stdout that says it is a terminal, as a user's shell is (trainwise then draws its progress bar)."""

    def isatty(self) -> bool:
        return True


def run_job(tmp_path: Path, store_uri: str, *overrides: str):
    """One run in-process, the way the Hydra task runs it."""
    from trainwise.jobs import JobContext, run

    cfg = compose_config("profile=smoke", f"tracking.uri={store_uri}", *overrides)
    return run(cfg, JobContext(job_dir=tmp_path / "job", overrides=list(overrides)))


@dataclass
class Server:
    uri: str
    process: subprocess.Popen
    command: list[str]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)

    def start(self) -> None:
        """(Re)start on the same port, database and artifact folder; wait until it answers."""
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        pytest.fail("mlflow server did not start")
