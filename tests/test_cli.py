"""The commands as a user runs them: a sweep of the three strategies, and the installed wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env, mlflow_client

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = cli_env()
    return env | extra


# Slow (~21 s): test_sweep.py's compare-experiment and joblib tests cover the same path in `make test`.
@pytest.mark.slow
def test_sweep_of_the_three_strategies_shares_one_foundation(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trainwise", "train", "-m", "strategy=scratch,full,finetune", "profile=smoke"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "workflowType=machine_learning" in result.stdout
    client = mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`trainwise.role` = 'job'")
    by_strategy = {r.data.tags["trainwise.strategy"]: r for r in runs}
    assert sorted(by_strategy) == ["finetune", "full", "scratch"] and len(runs) == 3  # no second foundation
    assert all(r.info.status == "FINISHED" for r in runs)
    assert by_strategy["finetune"].data.tags["trainwise.foundation_run"] == by_strategy["full"].info.run_id
    overrides = client.download_artifacts(by_strategy["full"].info.run_id, "config/overrides.yaml", str(tmp_path))
    assert "strategy=full" in Path(overrides).read_text()


@pytest.mark.slow  # ~31 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_installed_wheel_runs_from_an_empty_folder(tmp_path):
    """Build the wheel, install it alone into a folder first on the path, run it where there is no repo."""
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("trainwise-*.whl")
    installed = subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert (site / "trainwise" / "conf" / "train.yaml").is_file()

    env = _env(PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import trainwise; print(trainwise.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(site))  # the wheel, not the checkout
    result = subprocess.run([str(site / "bin" / "trainwise"), "train", "profile=smoke"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = mlflow_client(f"sqlite:///{work / 'mlflow.db'}").search_runs(["1"])
    assert run.info.status == "FINISHED" and run.data.metrics["test/acc"] >= 0
