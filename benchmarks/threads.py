"""Parallel sweeps and CPU threads: a 4-job sweep with each job given its share of the cores, against the same
sweep with every job taking a thread per core (what oversubscribes a machine). Measurements, not tests.

    python benchmarks/threads.py [--jobs 4] [--epochs 40] [--repeats 2] [--json FILE]

For each launcher (`hydra/launcher=joblib hydra.launcher.n_jobs=N`, `hydra/launcher=submitit_local`) two variants,
repetitions interleaved:
- shared (as shipped): joblib's loky workers get cores // N threads (joblib does this itself); trainwise's
  submitit_local preset sets OMP_NUM_THREADS = cores // N for its jobs.
- unshared (before): every job a thread per core. joblib with OMP_NUM_THREADS and MKL_NUM_THREADS = cores in the
  environment (loky keeps a user's values; torch takes MKL's over OMP's, and loky sets both); submitit_local
  through the plugin's own LocalLauncher.
The sweep: `strategy=scratch model=small_cnn dataset=digits seed=0..N-1 trainer.max_epochs=E` into a temporary SQLite
store. Figures: wall seconds of the whole command, the median of the jobs' `cost/fit_seconds`, and the threads each
job computed with (its `trainwise.torch_threads` tag).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLUGIN_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def _cores() -> int:
    from trainwise.distributed import threads_per_rank

    return threads_per_rank(1)  # the cores this process may run on, as the launchers count them


def variants(jobs: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    joblib = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    local = ["hydra/launcher=submitit_local"]
    return {
        "joblib shared": (joblib, {}),
        "joblib unshared": (joblib, {"OMP_NUM_THREADS": str(_cores()), "MKL_NUM_THREADS": str(_cores())}),
        "submitit_local shared": (local, {}),
        "submitit_local unshared": (local + [f"hydra.launcher._target_={PLUGIN_LOCAL}"], {}),
    }


def sweep(work: Path, launcher: list[str], env_extra: dict[str, str], jobs: int, epochs: int) -> dict:
    from mlflow import MlflowClient

    work.mkdir(parents=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    args = ["-m", *launcher, "strategy=scratch", "model=small_cnn", "dataset=digits",
            "seed=" + ",".join(map(str, range(jobs))), f"trainer.max_epochs={epochs}", "min_train_steps=0",
            f"tracking.uri={uri}", "tracking.experiment=threads", f"hydra.sweep.dir={work / 'multirun'}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "OMP_NUM_THREADS")} | env_extra
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "trainwise", "train", *args], cwd=work, env=env,
                            capture_output=True, text=True, timeout=1800)  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"trainwise train {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("threads")
    runs = client.search_runs([experiment.experiment_id], "tags.`trainwise.role` = 'job'")
    assert len(runs) == jobs, f"{len(runs)} job runs, expected {jobs}"
    return {
        "wall_s": wall,
        "fit_s": statistics.median(r.data.metrics["cost/fit_seconds"] for r in runs),
        "threads": sorted({r.data.tags.get("trainwise.torch_threads", "?") for r in runs}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cases = variants(args.jobs)
    rows: dict[str, list[dict]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):  # interleaved: every variant once, then again
            for name, (launcher, env) in cases.items():
                figures = sweep(Path(tmp) / f"{rep}-{name.replace(' ', '-')}", launcher, env, args.jobs, args.epochs)
                rows[name].append(figures)
                print(f"rep {rep + 1} {name:<24} wall {figures['wall_s']:6.1f} s  job fit {figures['fit_s']:6.2f} s"
                      f"  threads per job {','.join(figures['threads'])}", flush=True)  # fmt: skip
    summary = {
        name: {
            "wall_s": statistics.median(r["wall_s"] for r in done),
            "fit_s": statistics.median(r["fit_s"] for r in done),
            "threads": done[0]["threads"],
        }
        for name, done in rows.items()
    }
    print(f"\n{args.jobs} jobs, {_cores()} cores, {args.epochs} epochs, median of {args.repeats}")
    print(f"{'variant':<26}{'wall s':>8}{'job fit s':>11}  threads per job")
    for name, figures in summary.items():
        print(f"{name:<26}{figures['wall_s']:>8.1f}{figures['fit_s']:>11.2f}  {','.join(figures['threads'])}")
    for launcher in ("joblib", "submitit_local"):
        shared, unshared = summary[f"{launcher} shared"], summary[f"{launcher} unshared"]
        print(f"{launcher}: unshared / shared wall {unshared['wall_s'] / shared['wall_s']:.2f}, "
              f"job fit {unshared['fit_s'] / shared['fit_s']:.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"jobs": args.jobs, "cores": _cores(), "epochs": args.epochs,
                                         "repeats": args.repeats, "variants": summary}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
