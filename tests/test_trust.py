"""A logged config is data, not code: resume and reproduce instantiate only the exact callables trainwise's own
configs name, at any depth, unless the user says they trust the run's author."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from helpers import cli_env, mlflow_client, run_job
from trainwise.errors import UserError
from trainwise.tracking import logged

HUBCONF = """\
from pathlib import Path

Path({marker!r}).write_text("code from a logged config ran")


def weight_decay():
    return 0.0
"""


def _tamper(tmp_path, store_uri, run_id: str) -> str:
    """Overwrite the run's logged config with one whose optimizer hides a nested torch.hub.load of a local
    hubconf.py (which writes a marker file when imported); returns the marker's path."""
    marker = tmp_path / "marker.txt"
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(HUBCONF.format(marker=str(marker)))
    client = mlflow_client(store_uri)
    config = OmegaConf.load(client.download_artifacts(run_id, "config/config.yaml", str(tmp_path)))
    config.optimizer.weight_decay = {"_target_": "torch.hub.load", "repo_or_dir": str(hub), "model": "weight_decay",
                                     "source": "local", "trust_repo": True}  # fmt: skip
    client.log_text(run_id, OmegaConf.to_yaml(config), "config/config.yaml")
    return marker


def test_reproduce_refuses_a_nested_target_that_would_run_code(tmp_path, store_uri):
    original = run_job(tmp_path / "a", store_uri, "strategy=scratch")
    marker = _tamper(tmp_path, store_uri, original.run_id)
    env = cli_env()
    command = [sys.executable, "-m", "trainwise", "reproduce", original.run_id, "--tracking-uri", store_uri]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "the logged config ran code"
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert "optimizer.weight_decay._target_=torch.hub.load" in line and "--trust" in line


def test_resume_refuses_it_too_unless_trust_is_true(tmp_path, store_uri):
    original = run_job(tmp_path / "a", store_uri, "strategy=scratch")
    marker = _tamper(tmp_path, store_uri, original.run_id)
    mlflow_client(store_uri).set_terminated(original.run_id, "KILLED")  # an interrupted run, as resume expects
    with pytest.raises(UserError, match="torch.hub.load.*trust=true"):
        run_job(tmp_path / "b", store_uri, f"resume={original.run_id}")
    assert not marker.exists()
    from trainwise.tracking import open_store

    trusted = logged.logged_config(open_store(store_uri), original.run_id, trust=True)  # the user's call
    assert trusted.optimizer.weight_decay._target_ == "torch.hub.load"


def test_targets_are_checked_at_every_depth_and_by_exact_name():
    tree = {
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.1},
        "a": [{"b": {"_target_": "builtins.exec"}}],
        "c": {"_target_": "torch.optim.Adam.__init__"},  # a prefix of an allowed name is not that name
        "d": {"_target_": "${oc.env:EVIL}"},  # an interpolation is not an allowed name either
        "e": {"_target_": "torch.utils.cpp_extension.load_inline"},
        "f": {"_target_": "torch.optim.RMSprop"},  # any optimizer class of torch.optim, as docs/configuration.md offers
        "g": {"_target_": "torch.optim.lr_scheduler.LambdaLR"},  # but nothing else under torch.optim
    }
    assert logged.untrusted_targets(tree) == [
        "a[0].b._target_=builtins.exec",
        "c._target_=torch.optim.Adam.__init__",
        "d._target_=${oc.env:EVIL}",
        "e._target_=torch.utils.cpp_extension.load_inline",
        "g._target_=torch.optim.lr_scheduler.LambdaLR",
    ]


def test_every_target_in_trainwise_configs_is_allowed():
    from trainwise.paths import conf_dir, experiments_dir

    named = set()
    for folder in (conf_dir(), experiments_dir()):
        for path in folder.rglob("*.yaml"):
            named |= {line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                      if line.strip().startswith("_target_:")}  # fmt: skip
    assert named and named <= set(logged.ALLOWED_TARGETS)
