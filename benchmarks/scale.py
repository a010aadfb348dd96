"""trainwise scale figures: parallel sweeps through one real `mlflow server`. Measurements, not tests.

    python benchmarks/scale.py [--jobs 1,2,4] [--epochs 5] [--repeats 1] [--ddp-ranks 2] [--one-thread]
                               [--busy K] [--server-workers N] [--json FILE]

Starts a local `mlflow server` (SQLite backend and served artifacts in a temporary folder, 127.0.0.1, a free port,
MLflow's default number of workers unless --server-workers), then for each N in --jobs runs one sweep of N jobs
in parallel through it, as a user would:

    trainwise train -m hydra/launcher=joblib hydra.launcher.n_jobs=N strategy=scratch seed=0,..,N-1 \\
        model=small_cnn dataset=digits trainer.max_epochs=E tracking=server tracking.uri=http://127.0.0.1:PORT

Per sweep it records: wall time of the whole command (Python start, the N jobs, the sweep's report), CPU seconds
of the command and its children, and of the server's process group (from /proc: Linux only), the HTTP requests
the server logged (uvicorn access log), and per job from MLflow alone: `cost/fit_seconds`, the number of metric
points stored (every key's full history), points per fit second, and the bytes under `checkpoints/`.

--ddp-ranks R adds two single runs (not sweeps), `accelerator=cpu` (one process) and `accelerator=ddp_cpu
accelerator.devices=R` (R CPU processes, gloo), with the same figures: only rank 0 talks to MLflow.
--one-thread adds the 1-job sweep with OMP_NUM_THREADS=1: joblib's workers (N > 1) and Lightning's CPU DDP ranks
get cores // N torch threads each, a lone job gets all cores, which is what a busy machine punishes.
--busy K keeps K CPU-bound busy loops running during the measurements: a machine shared with other work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ACCESS_LINE = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) HTTP/[\d.]+" (\d{3})')


# ---------------------------------------------------------------------------------------------------------
# The server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` in its own process group; its access log goes to a file that is read by offset."""

    def __init__(self, folder: Path, workers: int | None):
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                   "--artifacts-destination", str(folder / "server-artifacts"), "--serve-artifacts"]  # fmt: skip
        if workers:
            command += ["--workers", str(workers)]
        self.artifacts = folder / "server-artifacts"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                break
            except OSError:
                if self.process.poll() is not None:
                    raise SystemExit(f"mlflow server exited:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        else:
            self.stop()
            raise SystemExit("mlflow server did not answer within 120 s")
        # /health answers once one worker is up; the others may still be importing MLflow. Wait until the group
        # is idle so that no sweep is charged for the server's start, then measure what idling costs.
        deadline, last = time.time() + 120, _group_cpu_seconds(self.process.pid)
        while time.time() < deadline:
            time.sleep(2)
            now = _group_cpu_seconds(self.process.pid)
            if now - last < 0.2:
                break
            last = now
        time.sleep(5)
        self.idle_cpu_per_s = (_group_cpu_seconds(self.process.pid) - now) / 5
        self.processes = len(_group_pids(self.process.pid))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)

    def counters(self) -> dict[str, float]:
        """Cumulative: CPU seconds of the server's process group, log size (to count requests from there on)."""
        return {"cpu_s": _group_cpu_seconds(self.process.pid), "log_offset": self.log.stat().st_size}

    def requests_since(self, offset: int) -> dict[str, int]:
        with self.log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        counts: dict[str, int] = {"total": 0, "log_batch": 0, "artifacts_put": 0, "artifacts_get": 0, "other": 0}
        for method, path, _status in ACCESS_LINE.findall(text):
            counts["total"] += 1
            if path.endswith("/runs/log-batch"):
                counts["log_batch"] += 1
            elif "/mlflow-artifacts/" in path and method == "PUT":
                counts["artifacts_put"] += 1
            elif "/mlflow-artifacts/" in path:
                counts["artifacts_get"] += 1
            else:
                counts["other"] += 1
        return counts


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def _group_cpu_seconds(pgid: int) -> float:
    """user + system CPU of every live process in the group, plus what they collected from reaped children."""
    if not Path("/proc/self/stat").exists():
        return float("nan")
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in _group_pids(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / ticks


# ---------------------------------------------------------------------------------------------------------
# One measured command


def _trainwise(cwd: Path, args: list[str], timeout: int, env_extra: dict[str, str]) -> tuple[float, float]:
    """Run `trainwise train ...`; wall seconds and CPU seconds of it and everything it started."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | env_extra
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "trainwise", "train", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"trainwise train {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _job_figures(client, experiment: str) -> list[dict]:
    """Per job run, from MLflow alone."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`trainwise.role` = 'job'")
    jobs = []
    for run in runs:
        rid = run.info.run_id
        points = {key: len(client.get_metric_history(rid, key)) for key in run.data.metrics}
        checkpoints = client.list_artifacts(rid, "checkpoints")
        fit = run.data.metrics["cost/fit_seconds"]
        jobs.append({
            "run_id": rid,
            "status": run.info.status,
            "fit_s": fit,
            "metric_keys": len(points),
            "metric_points": sum(points.values()),
            "metric_points_per_fit_s": sum(points.values()) / fit,
            "checkpoint_files": len(checkpoints),
            "checkpoint_bytes": sum(a.file_size or 0 for a in checkpoints),
            "test_acc": run.data.metrics.get("test/acc"),
        })  # fmt: skip
    return jobs


def _code_state() -> str:
    """The commit measured, and which files under src/ and conf/ differed from it (figures move with the code)."""
    try:
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "src", "conf"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    changed = [line[3:] for line in dirty.stdout.splitlines()]
    return f"{commit} + uncommitted {', '.join(changed)}" if changed else commit


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def measure(server: MlflowServer, work: Path, label: str, rep: int, args: list[str], jobs: int, env: dict[str, str],
            timeout: int) -> dict:  # fmt: skip
    from mlflow import MlflowClient

    name = f"{re.sub(r'[^a-z0-9]+', '-', label)}-rep{rep}"
    cwd = work / name
    cwd.mkdir()
    experiment = f"scale-{name}"
    load_before = os.getloadavg()[0]
    args = [*args, "tracking=server", f"tracking.uri={server.uri}", f"tracking.experiment={experiment}"]
    store_before, artifacts_before = server.counters(), _dir_bytes(server.artifacts)
    wall, cpu = _trainwise(cwd, args, timeout, env)
    time.sleep(1.0)  # let the access log reach the file
    store_after = server.counters()  # before reading back: the read-back requests are not the sweep's
    requests = server.requests_since(int(store_before["log_offset"]))
    artifact_bytes = _dir_bytes(server.artifacts) - artifacts_before
    runs = _job_figures(MlflowClient(tracking_uri=server.uri), experiment)
    if len(runs) != jobs or any(j["status"] != "FINISHED" for j in runs):
        raise RuntimeError(f"{label}: expected {jobs} FINISHED job runs, got {[j['status'] for j in runs]}")
    fits = [j["fit_s"] for j in runs]
    return {
        "label": label,
        "rep": rep,
        "jobs": jobs,
        "load_avg_before": load_before,
        "wall_s": wall,
        "client_cpu_s": cpu,
        "server_cpu_s": store_after["cpu_s"] - store_before["cpu_s"],
        "server_cpu_above_idle_s": store_after["cpu_s"] - store_before["cpu_s"] - server.idle_cpu_per_s * wall,
        "server_requests": requests,
        "artifact_store_bytes": artifact_bytes,
        "fit_s_median": statistics.median(fits),
        "fit_s_min": min(fits),
        "fit_s_max": max(fits),
        "metric_points_per_job": statistics.median(j["metric_points"] for j in runs),
        "metric_points_per_fit_s_median": statistics.median(j["metric_points_per_fit_s"] for j in runs),
        "checkpoint_bytes_per_job": statistics.median(j["checkpoint_bytes"] for j in runs),
        "checkpoint_files_per_job": statistics.median(j["checkpoint_files"] for j in runs),
        "load_avg_after": os.getloadavg()[0],
        "runs": runs,
    }


def summarize(rows: list[dict]) -> list[dict]:
    """Per label, the median over repetitions of every figure (fit min/max and wall min/max over all of them)."""
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        reps = [r for r in rows if r["label"] == label]
        row = {k: statistics.median(r[k] for r in reps) for k, v in reps[0].items() if isinstance(v, (int, float))}
        row |= {"label": label, "reps": len(reps), "fit_s_min": min(r["fit_s_min"] for r in reps),
                "fit_s_max": max(r["fit_s_max"] for r in reps), "wall_s_min": min(r["wall_s"] for r in reps),
                "wall_s_max": max(r["wall_s"] for r in reps)}  # fmt: skip
        row["server_requests"] = {
            k: statistics.median(r["server_requests"][k] for r in reps) for k in reps[0]["server_requests"]
        }
        del row["rep"]
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------


def _table(rows: list[dict]) -> str:
    head = ("| sweep | wall s | fit s/job (min-max) | metric points/job | points per fit s | ckpt bytes/job (files) "
            "| server requests (per job) | server CPU s (per job) | client CPU s |")  # fmt: skip
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        req = r["server_requests"]["total"]
        wall = f"{r['wall_s']:.1f}"
        if r.get("reps", 1) > 1:
            wall += f" ({r['wall_s_min']:.1f}-{r['wall_s_max']:.1f})"
        lines.append(
            f"| {r['label']} | {wall} | {r['fit_s_median']:.1f} ({r['fit_s_min']:.1f}-{r['fit_s_max']:.1f})"
            f" | {r['metric_points_per_job']:.0f} | {r['metric_points_per_fit_s_median']:.1f}"
            f" | {r['checkpoint_bytes_per_job']:,.0f} ({r['checkpoint_files_per_job']:.0f})"
            f" | {req:.0f} ({req / r['jobs']:.0f}) | {r['server_cpu_s']:.1f} ({r['server_cpu_s'] / r['jobs']:.1f})"
            f" | {r['client_cpu_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1,2,4", help="parallel jobs per sweep, comma-separated (default 1,2,4)")
    parser.add_argument("--epochs", type=int, default=5, help="trainer.max_epochs of every job (default 5)")
    parser.add_argument("--server-workers", type=int, default=None, help="mlflow server --workers (default: MLflow's)")
    parser.add_argument("--ddp-ranks", type=int, default=0, help="also a 1-rank run and one with R CPU DDP ranks")
    parser.add_argument("--one-thread", action="store_true", help="also the 1-job sweep with OMP_NUM_THREADS=1")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound busy loops running meanwhile (a shared machine)")
    parser.add_argument("--repeats", type=int, default=1, help="repetitions, interleaved; medians reported")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per sweep")
    parser.add_argument("--json", type=Path, help="write the figures (and every job run's) as JSON")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.jobs.split(",")]
    common = ["strategy=scratch", "model=small_cnn", "dataset=digits", f"trainer.max_epochs={args.epochs}"]

    folder = Path(tempfile.mkdtemp(prefix="trainwise-scale-"))
    os.environ.setdefault("TRAINWISE_CACHE", str(folder / "cache"))
    started, code = dt.datetime.now(dt.timezone.utc), _code_state()
    load_before = os.getloadavg()[0]
    server = MlflowServer(folder, args.server_workers)
    cases = []  # (label, overrides, job runs expected, extra environment)
    for n in counts:
        sweep = ["-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n}", "seed=" + ",".join(map(str, range(n)))]
        cases.append((f"{n} job{'s' * (n > 1)}", sweep, n, {}))
        if args.one_thread and n == 1:
            cases.append(("1 job, OMP_NUM_THREADS=1", sweep, n, {"OMP_NUM_THREADS": "1"}))
    if args.ddp_ranks:
        cases.append(("1 run, 1 rank", ["accelerator=cpu"], 1, {}))
        ranks = args.ddp_ranks
        cases.append((f"1 run, {ranks} ranks", ["accelerator=ddp_cpu", f"accelerator.devices={ranks}"], 1, {}))
    rows, failures = [], []
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        print(f"mlflow server {server.uri}: {server.processes} processes, idle CPU {server.idle_cpu_per_s:.3f} s/s")
        for rep in range(args.repeats):  # interleaved: every case once, then again
            for label, extra, jobs, env in cases:
                try:
                    rows.append(measure(server, folder, label, rep, [*extra, *common], jobs, env, args.timeout))
                except (RuntimeError, subprocess.TimeoutExpired) as err:  # left out of the medians, listed
                    failures.append({"label": label, "rep": rep, "error": str(err)[-3000:]})
                    print(f"{label}, rep {rep + 1}: FAILED\n{err}", flush=True)
                    continue
                print(_table(rows[-1:]).splitlines()[-1], f"rep {rep + 1}", flush=True)
    finally:
        for loop in busy:
            loop.kill()
            loop.wait()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    summary = summarize(rows)
    print()
    print(_table(summary))
    machine = f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}"
    if args.busy:
        machine += f", {args.busy} busy loop(s) running meanwhile"
    if "OMP_NUM_THREADS" in os.environ:
        machine += f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    print(f"\n{started:%Y-%m-%d %H:%M} UTC; {machine}; load average before {load_before:.1f}; code {code}")
    if args.json:
        out = {
            "date_utc": started.isoformat(timespec="seconds"),
            "machine": machine,
            "code": code,
            "load_avg_before": load_before,
            "epochs": args.epochs,
            "busy_loops": args.busy,
            "server_workers": args.server_workers or "mlflow default",
            "server_processes": server.processes,
            "server_idle_cpu_s_per_s": server.idle_cpu_per_s,
            "summary": summary,
            "measurements": rows,
            "failures": failures,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if failures:
        print(f"{len(failures)} measurement(s) failed: {', '.join(f['label'] for f in failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
