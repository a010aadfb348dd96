"""The `trainwise` command. Imports stay lazy: `trainwise --help` loads neither torch nor MLflow."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from trainwise.errors import UserError

_ABOUT = """\
Measure, on your data and compute, whether to train from scratch, train fully on a large dataset,
or fine-tune a pretrained model. Every run lands in MLflow."""

_TRACKING_HELP = "wins over $MLFLOW_TRACKING_URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
_DEFAULT_URI = "sqlite:///mlflow.db"


@dataclass(frozen=True)
class Command:
    """One `trainwise <name>` command: the function it runs, and its lines in `trainwise --help`."""

    run: Callable[[list[str]], int]
    usage: str
    help: str


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: trainwise <command> [args]\n\n{_help_text()}")
        raise SystemExit(0 if argv else 2)
    name, args = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(
            f"error: unknown command {name!r}; commands: {', '.join(COMMANDS)} (see trainwise --help)", file=sys.stderr
        )
        raise SystemExit(2)
    try:
        raise SystemExit(command.run(args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _help_text() -> str:
    lines = [_ABOUT, "", "commands:"]
    for command in COMMANDS.values():
        first, *rest = command.help.splitlines()
        if len(command.usage) < 20:
            lines.append(f"  {command.usage:<20}{first}")
        else:
            lines += [f"  {command.usage}", f"  {'':<20}{first}"]
        lines += [f"  {'':<20}{line}" for line in rest]
    return "\n".join(lines) + "\n"


def _train(args: list[str]) -> int:
    from trainwise.app import hydra_main
    from trainwise.overrides import check_overrides

    check_overrides(args)
    if any(arg.lstrip("+~").split("=", 1)[0] == "tracking.uri" for arg in args if "=" in arg):
        _typed_uri_wins()
    return hydra_main(args)


def _typed_uri_wins() -> None:
    """A tracking URI typed on the command line wins over MLFLOW_TRACKING_URI, which wins over the configs'
    default (store.resolve_uri). Dropping the variable here, before Hydra runs, covers every reader in this
    process and in the ones it starts (sweep workers, DDP ranks, the re-run of `reproduce`)."""
    import os

    os.environ.pop("MLFLOW_TRACKING_URI", None)


def _tracking_uri(opts: argparse.Namespace) -> str:
    if opts.tracking_uri is None:
        return _DEFAULT_URI  # store.resolve_uri prefers MLFLOW_TRACKING_URI to it
    _typed_uri_wins()
    return opts.tracking_uri


def _report(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trainwise report", description="Compare the runs of a sweep or experiment.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sweep", metavar="PARENT_RUN_ID", help="a sweep's parent run (default: the newest sweep)")
    which.add_argument(
        "--experiment",
        metavar="NAME",
        help="the runs of an MLflow experiment: the newest run of each setting and seed, reproductions left out",
    )
    parser.add_argument("--pool", action="store_true", help="with --experiment: every run, repeats included")
    parser.add_argument("--out", default="trainwise-report", help="folder for report.md, report.html and the PNGs")
    parser.add_argument(
        "--target-acc",
        type=float,
        default=None,
        metavar="ACC",
        help="validation accuracy (0-1) time to accuracy is measured at (default: the highest every strategy reaches)",
    )
    parser.add_argument("--tracking-uri", default=None, help=_TRACKING_HELP)
    opts = parser.parse_args(args)
    if opts.target_acc is not None and not 0 < opts.target_acc <= 1:
        raise UserError(f"--target-acc {opts.target_acc}: give an accuracy between 0 and 1, e.g. --target-acc 0.95")

    from pathlib import Path

    from trainwise.report import build_report
    from trainwise.tracking import open_store

    store = open_store(_tracking_uri(opts))
    sweep = opts.sweep
    if not sweep and not opts.experiment:
        sweeps = store.client.search_runs(
            [e.experiment_id for e in store.client.search_experiments()],
            "tags.`trainwise.role` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not sweeps:
            raise UserError(f"no sweep in {store.uri}; give --experiment NAME or run `trainwise train -m ...` first")
        sweep = sweeps[0].info.run_id
    out = Path(opts.out)
    build_report(store, sweep, opts.experiment, out, pool=opts.pool, target_acc=opts.target_acc).print()
    return 0


def _reproduce(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trainwise reproduce", description="Re-run a logged run and compare.")
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", default=None, help=_TRACKING_HELP)
    parser.add_argument("--trust", action="store_true", help="allow _target_ values outside the allowlist")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="accuracies may differ by T (absolute), losses by T times the original (relative); parameter counts "
        "must match (default: 0 when deterministic on CPU, else 0.01)",
    )
    opts = parser.parse_args(args)
    from trainwise.reproduce import reproduce

    return reproduce(opts.run_id, _tracking_uri(opts), trust=opts.trust, tolerance=opts.tolerance)


def _export(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trainwise export", description="Write a run's best network to a file.")
    parser.add_argument("run_id")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    parser.add_argument("--out", default=None, help="the file to write (default: ./RUN_ID.onnx or .pt)")
    parser.add_argument("--tracking-uri", default=None, help=_TRACKING_HELP)
    opts = parser.parse_args(args)
    from trainwise.export import export

    export(opts.run_id, _tracking_uri(opts), opts.format, opts.out)
    return 0


def _ui(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trainwise ui", description="Open the MLflow UI on the tracking store.")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--tracking-uri", default=None, help=_TRACKING_HELP)
    opts = parser.parse_args(args)

    import subprocess

    from trainwise.tracking.store import resolve_uri, runs_table_url, sqlite_path

    uri = resolve_uri(_tracking_uri(opts))
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {db}; run `make demo` or `trainwise train` here first")
    experiment = _default_experiment_id(uri)
    base = f"http://{opts.host}:{opts.port}"
    print(f"MLflow UI on {base} - runs table: {runs_table_url(experiment, base) if experiment else base}", flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", opts.host]
    return subprocess.call([*command, "--port", str(opts.port)])


def _default_experiment_id(uri: str) -> str | None:
    """The experiment the UI link opens: the newest one with runs of trainwise's (not a foundation lease)."""
    from mlflow import MlflowClient

    from trainwise.tracking.lease import PREFIX as LEASE_PREFIX

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiments = client.search_experiments(order_by=["last_update_time DESC"])
    named = [e for e in experiments if e.name != "Default" and not e.name.startswith(LEASE_PREFIX)]
    return named[0].experiment_id if named else None


# The commands, in the order `trainwise --help` lists them.
COMMANDS = {
    "train": Command(
        _train,
        "train [overrides]",
        "one run; -m sweeps, e.g.  trainwise train -m strategy=scratch,full,finetune\n"
        "(`trainwise train --help` lists the config groups and their options)",
    ),
    "report": Command(
        _report,
        "report [--sweep RUN_ID | --experiment NAME] [--out DIR] [--target-acc ACC]",
        "the comparison table and plots, rebuilt from MLflow (default: the newest sweep)",
    ),
    "reproduce": Command(
        _reproduce,
        "reproduce RUN_ID",
        "run a logged run again from its logged config; compare the metrics (exit 1 if they differ\n"
        "or if the run logged none to compare)",
    ),
    "export": Command(
        _export,
        "export RUN_ID [--format onnx|torchscript] [--out FILE]",
        "a run's best network as an ONNX or TorchScript file, checked against PyTorch",
    ),
    "ui": Command(_ui, "ui", "the MLflow UI for the configured store, on 127.0.0.1"),
}
