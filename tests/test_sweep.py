"""Sweeps as users run them: one parent run per sweep, failures contained, resumable, parallel, Optuna."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env, compose_config, mlflow_client
from trainwise.report import build_report
from trainwise.tracking import open_store


def _train(cwd: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = cli_env()
    command = [sys.executable, "-m", "trainwise", "train", *args, "profile=smoke"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _runs(cwd: Path, role: str):
    client = mlflow_client(f"sqlite:///{cwd / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(ids, f"tags.`trainwise.role` = '{role}'", order_by=["attributes.start_time ASC"])


@pytest.mark.slow  # ~34 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_a_failing_job_fails_its_run_and_the_parent_but_not_the_others(tmp_path):
    missing = tmp_path / "missing.ckpt"
    result = _train(tmp_path, "-m", "strategy=scratch,finetune", f"++strategy.pretrained={missing}")
    assert result.returncode == 1, result.stderr[-3000:]
    client, (parent,) = _runs(tmp_path, "sweep")
    assert parent.info.status == "FAILED"
    _, jobs = _runs(tmp_path, "job")
    by_strategy = {r.data.tags["trainwise.strategy"]: r for r in jobs}
    assert by_strategy["scratch"].info.status == "FINISHED"
    assert by_strategy["finetune"].info.status == "FAILED"
    assert "missing.ckpt" in by_strategy["finetune"].data.tags["trainwise.error"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/val_acc.png", "report/accuracy_vs_cost.png"} <= report
    markdown = Path(client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path))).read_text()
    assert "did not finish" in markdown and "finetune" in markdown


@pytest.mark.slow  # ~78 s on a 2-core 2 GHz AMD EPYC: keeps `make test` under 10 minutes there
def test_compare_experiment_then_report_from_mlflow_alone(tmp_path):
    # A smaller search (2 runs a strategy) and 2 seeds, to keep make test short; the slow suite runs it as shipped.
    result = _train(tmp_path, "experiment=compare", "tuning.lr=[0.003]", "hydra.sweeper.params.seed='0,1'")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best test accuracy" in result.stdout  # the table and summary are printed at the end
    client, (parent,) = _runs(tmp_path, "sweep")
    assert parent.info.status == "FINISHED"
    assert client.get_experiment(parent.info.experiment_id).name == "compare"
    _, jobs = _runs(tmp_path, "job")
    strategies = sorted(r.data.tags["trainwise.strategy"] for r in jobs)
    assert strategies == ["finetune"] * 2 + ["full"] + ["scratch"] * 2  # the foundation trained once, on the side
    assert parent.data.tags["trainwise.best_run"] in {r.info.run_id for r in jobs}
    # Each strategy's learning rate came from its own search, nested under the sweep, with the same budget.
    _, searches = _runs(tmp_path, "tuning")
    assert sorted(s.data.tags["trainwise.strategy"] for s in searches) == ["finetune", "scratch"]
    assert {s.data.tags["mlflow.parentRunId"] for s in searches} == {parent.info.run_id}
    _, trials = _runs(tmp_path, "tuning_trial")
    assert sorted(t.data.tags["mlflow.parentRunId"] for t in trials) == sorted([s.info.run_id for s in searches] * 2)
    assert "Tuning scratch: 2 runs" in result.stdout and "Tuning finetune: 2 runs" in result.stdout
    # The verdict and the summary are the parent's description, which the MLflow UI shows on the run's overview.
    description = parent.data.tags["mlflow.note.content"]
    verdict = build_report(
        open_store(f"sqlite:///{tmp_path / 'mlflow.db'}"), parent.info.run_id, out_dir=tmp_path / "v"
    )
    assert description.split("\n\n")[0] == " ".join(verdict.verdict) and "finetune" in verdict.verdict[0]
    assert "Best test accuracy on the target data" in description and "Foundation full on glyphs" in description

    for args in (["--experiment", "compare"], []):  # (no argument: the newest sweep, by its parent's id)
        out = tmp_path / f"report{len(args)}"
        env = cli_env()
        rebuilt = subprocess.run(
            [sys.executable, "-m", "trainwise", "report", *args, "--out", str(out)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
        markdown = (out / "report.md").read_text()
        scratch = [r.data.metrics["test/acc"] for r in jobs if r.data.tags["trainwise.strategy"] == "scratch"]
        assert f"| {statistics.fmean(scratch):.3f} ± {statistics.stdev(scratch):.3f} |" in markdown
        html = (out / "report.html").read_text()
        assert "data:image/png;base64," in html  # self-contained


@pytest.mark.slow  # ~24 s: kept out of `make test` to hold it under 10 minutes with the install
def test_skip_finished_reuses_runs_and_the_report_still_covers_them(tmp_path):
    first = _train(tmp_path, "-m", "strategy=scratch,full", "sweep.skip_finished=true")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _train(tmp_path, "-m", "strategy=scratch,full", "sweep.skip_finished=true")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skipped, finished run") == 2
    client, parents = _runs(tmp_path, "sweep")
    _, jobs = _runs(tmp_path, "job")
    assert len(jobs) == 2 and len(parents) == 2
    reused = {k.split(".", 2)[2] for k in parents[1].data.tags if k.startswith("trainwise.reused.")}
    assert reused == {r.info.run_id for r in jobs}
    assert parents[1].info.status == "FINISHED"
    markdown = Path(client.download_artifacts(parents[1].info.run_id, "report/report.md", str(tmp_path))).read_text()
    assert "| scratch" in markdown and "- Foundation full on glyphs" in markdown  # the table holds target runs


@pytest.mark.slow  # ~25 s; make test stays under 10 minutes with the install (test_faults' four parallel jobs on
# one SQLite store and test_server's parallel sweep are slow too)
def test_joblib_parallel_jobs_on_sqlite_lose_nothing_and_share_one_foundation(tmp_path):
    result = _train(
        tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "strategy=scratch,full,finetune", "seed=0,1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr
    client, (parent,) = _runs(tmp_path, "sweep")
    _, jobs = _runs(tmp_path, "job")
    strategies = sorted(r.data.tags["trainwise.strategy"] for r in jobs)
    # full ignores `seed` (a foundation has its own), so both full jobs train the same config: 2 runs,
    # and no fine-tune trains a third.
    assert strategies == ["finetune", "finetune", "full", "full", "scratch", "scratch"]
    assert all(r.info.status == "FINISHED" for r in jobs) and parent.info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)
    from trainwise.distributed import threads_per_rank

    # joblib's loky workers get cores // n_jobs threads: the two jobs running at once share the cores
    assert {r.data.tags["trainwise.torch_threads"] for r in jobs} == {str(threads_per_rank(2))}


@pytest.mark.slow  # ~24 s: kept out of `make test` to hold it under 10 minutes with the install
def test_optuna_sweep_records_the_best_trial_on_the_parent(tmp_path):
    result = _train(tmp_path, "hparams_search=optuna", "hparams_search.n_trials=3")
    assert result.returncode == 0, result.stderr[-3000:]
    client, (parent,) = _runs(tmp_path, "sweep")
    _, jobs = _runs(tmp_path, "job")
    finetunes = [r for r in jobs if r.data.tags["trainwise.strategy"] == "finetune"]
    assert len(finetunes) == 3
    assert len([r for r in jobs if r.data.tags["trainwise.strategy"] == "full"]) == 1  # one shared foundation
    assert len({r.data.params["optimizer.lr"] for r in finetunes}) == 3  # the sweeper varied it
    best = client.get_run(parent.data.tags["trainwise.best_run"])
    # Among runs on the target data: the foundation's val/acc_best is on the source data.
    assert best.data.metrics["val/acc_best"] == max(r.data.metrics["val/acc_best"] for r in finetunes)
    assert parent.data.metrics["best/val_acc"] == best.data.metrics["val/acc_best"]


@pytest.mark.slow  # ~19 s: kept out of `make test` to hold it under 10 minutes with the install
def test_submitit_local_jobs_report_to_one_parent_and_share_the_cores(tmp_path):
    """Real submitit job processes (the SLURM launcher's local twin): parent, children and report. Both jobs run
    at once, each with half the cores as torch threads (the plugin's launcher gave each all of them)."""
    from trainwise.distributed import threads_per_rank

    result = _train(tmp_path, "-m", "hydra/launcher=submitit_local", "strategy=scratch,full")
    assert result.returncode == 0, result.stderr[-3000:]
    client, (parent,) = _runs(tmp_path, "sweep")
    _, jobs = _runs(tmp_path, "job")
    assert sorted(r.data.tags["trainwise.strategy"] for r in jobs) == ["full", "scratch"]
    assert [r.data.tags["trainwise.torch_threads"] for r in jobs] == [str(threads_per_rank(2))] * 2
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)
    assert parent.info.status == "FINISHED"
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_the_submitit_local_preset_is_trainwise_launcher_with_the_plugins_keys():
    """conf/hydra/launcher/submitit_local.yaml takes the plugin's place: the same keys and defaults, trainwise's
    launcher (each job its share of the cores)."""
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
    from omegaconf import OmegaConf

    cfg = compose_config("hydra/launcher=submitit_local", return_hydra_config=True)
    ours = OmegaConf.to_container(cfg.hydra.launcher)
    plugin = OmegaConf.to_container(OmegaConf.structured(LocalQueueConf))
    assert ours.pop("_target_") == "hydra_plugins.trainwise_local.launcher.TrainwiseLocalLauncher"
    plugin.pop("_target_")
    assert ours == plugin


def test_the_slurm_preset_composes_onto_submitit():
    cfg = compose_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1


def test_the_slurm_preset_asks_for_one_task_per_ddp_rank():
    from omegaconf.errors import InterpolationResolutionError

    def launcher(*overrides):
        cfg = compose_config("hydra/launcher=slurm", *overrides, return_hydra_config=True)
        return {k: cfg.hydra.launcher[k] for k in ("nodes", "tasks_per_node", "gpus_per_node")}

    ddp = launcher("accelerator=ddp", "accelerator.num_nodes=2", "accelerator.devices=4")
    assert ddp == {"nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4}
    assert launcher("accelerator=gpu") == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1}
    assert launcher("accelerator=cpu")["gpus_per_node"] == 0
    with pytest.raises(InterpolationResolutionError, match="accelerator.devices"):
        launcher("accelerator=ddp")  # devices=auto: SLURM must be told how many


def test_a_slurm_sweep_that_cannot_say_its_tasks_stops_with_one_line(tmp_path):
    command = [sys.executable, "-m", "trainwise", "train", "-m", "hydra/launcher=slurm", "accelerator=ddp"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: accelerator.devices='auto'")
    assert "Traceback" not in done.stderr and not (tmp_path / "mlflow.db").exists()
