"""trainwise performance figures (`make bench`): measurements, not tests.

Every figure is a ratio against a baseline measured in the same process, repetitions interleaved
(baseline 1, candidate 1, baseline 2, ...), median taken, so it holds on a noisy shared machine.

    python benchmarks/run.py [--json FILE] [--quick] [--skip-demo] [--gpu]

Per-epoch time is the median, over the epochs after the first, of the wall time from the start of one training
epoch to the start of the next (the last epoch ends at `on_train_end`). That cycle holds the training batches,
the validation pass and whatever the framework does between them (checkpoint saving, metric logging, epoch lines),
so the framework is charged for all of it. The narrower window `on_train_epoch_start` -> `on_validation_epoch_end`
is kept as a detail key (`*_window_s`). The hand-written loops mark the same boundaries.

See benchmarks/README.md for what each key means and the figures measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from figures.cached_features import cached_features
from figures.commands import cli_seconds, demo_seconds, glyphs_cached
from figures.device_resident import GLYPHS_PER_CLASS_CPU, device_resident
from figures.folders import folder_figures
from figures.framework import framework_overhead
from figures.gpu import gpu_figures
from figures.peer import peer_lht
from figures.tracking import tracking_overhead

# key -> (comparison, goal) on 2 CPU cores.
# trainwise keeps Lightning's Trainer, so the framework goals are about what trainwise adds on top of a bare Trainer
# running the same step; the hand-written loop stays as the physical reference (framework_overhead_ratio, no goal).
GOALS: dict[str, tuple[str, float]] = {
    "framework_over_lightning_ratio": ("<=", 1.05),
    "framework_python_calls_ratio": ("<=", 1.25),
    "tracking_overhead_ratio": ("<=", 1.03),
    "peer_lht_ratio": ("<=", 0.9),
    "cached_features_speedup": (">=", 10.0),
    "device_resident_speedup": (">=", 1.3),
    "folder_stream_images_per_second": (">=", 1.0),  # a ratio: trainwise / torchvision ImageFolder + DataLoader
    "folder_cache_speedup": (">=", 3.0),
    "cli_help_seconds": ("<=", 1.0),
    "cfg_job_seconds": ("<=", 1.0),
    "demo_seconds": ("<=", 120.0),
}


def _met(key: str, value: float) -> bool:
    op, goal = GOALS[key]
    return value <= goal if op == "<=" else value >= goal


def _show(results: dict[str, object], notes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="trainwise benchmarks")
    for column in ("key", "value", "goal", "met?"):
        table.add_column(column)
    for key, (op, goal) in GOALS.items():
        if key not in results:
            table.add_row(key, "skipped", f"{op} {goal:g}", "-")
            continue
        value = float(results[key])  # type: ignore[arg-type]
        met = _met(key, value)
        table.add_row(key, f"{value:.3f}", f"{op} {goal:g}", "[green]yes[/]" if met else "[red]no[/]")
    console = Console()
    console.print(table)
    for note in notes:
        console.print(f"  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures as one flat JSON object")
    parser.add_argument("--quick", action="store_true", help="1 repetition, fewer epochs (while developing)")
    parser.add_argument("--skip-demo", action="store_true", help="leave out demo_seconds (the longest part)")
    parser.add_argument("--gpu", action="store_true", help="also measure on CUDA (resnet18 bf16, resnet50 cached)")
    args = parser.parse_args(argv)

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # it would win over the temporary stores
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import torch

    reps = 1 if args.quick else 3
    results: dict[str, object] = {
        "reps": reps,
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "glyphs_cache_warm_at_start": glyphs_cached(),
    }
    notes: list[str] = []
    started = time.perf_counter()

    def step(name: str, fn):
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        value = fn()
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        return value

    with tempfile.TemporaryDirectory(prefix="trainwise-bench-") as folder:
        tmp = Path(folder)
        cli = step("cli", lambda: cli_seconds(tmp))
        results["cli_help_seconds"], results["cfg_job_seconds"] = cli["help"], cli["cfg_job"]

        # 7 repetitions (not 3): on a shared 2-core machine the 15-epoch runs drift by +-20 % between repetitions
        framework_reps = reps if args.quick else max(reps, 7)
        fw = step("framework_overhead", lambda: framework_overhead(tmp, framework_reps, args.quick))
        results["framework_overhead_ratio"] = fw.pop("ratio")
        results.update({f"framework_{k}": v for k, v in fw.items()}, framework_reps=framework_reps)
        results["framework_python_calls_ratio"] = (
            fw["trainwise_python_calls_per_epoch"] / fw["lightning_python_calls_per_epoch"]
        )
        notes.append(
            f"framework_overhead_ratio {results['framework_overhead_ratio']:.2f} = Lightning's loop "
            f"{fw['lightning_floor_ratio']:.2f} (the same step in a bare Trainer / the hand loop) x trainwise on top "
            f"{fw['over_lightning_ratio']:.2f} (trainwise / the bare Trainer); Python calls per epoch: hand loop "
            f"{fw['hand_python_calls_per_epoch']:,.0f}, bare Trainer {fw['lightning_python_calls_per_epoch']:,.0f}, "
            f"trainwise {fw['trainwise_python_calls_per_epoch']:,.0f}; in a terminal (progress bar) "
            f"{fw['terminal_ratio']:.2f} x the hand loop, {fw['terminal_python_calls_per_epoch']:,.0f} calls per "
            f"epoch; the hand loop through Lightning Fabric {fw['fabric_floor_ratio']:.2f} x, "
            f"{fw['fabric_python_calls_per_epoch']:,.0f} calls per epoch"
        )

        peer = step("peer_lht", lambda: peer_lht(tmp, framework_reps, args.quick))
        results["peer_lht_ratio"] = peer.pop("ratio")
        results.update({f"peer_{k}": v for k, v in peer.items()})
        notes.append(
            f"peer_lht_ratio: per epoch trainwise {peer['trainwise_epoch_s']:.3f} s, the lightning-hydra-template way "
            f"{peer['lht_epoch_s']:.3f} s; Python calls per epoch {peer['trainwise_python_calls_per_epoch']:,.0f} vs "
            f"{peer['lht_python_calls_per_epoch']:,.0f}"
        )

        tr = step("tracking_overhead", lambda: tracking_overhead(tmp, reps, args.quick))
        results["tracking_overhead_ratio"] = tr.pop("ratio")
        results.update({f"tracking_{k}": v for k, v in tr.items()})

        cf = step("cached_features", lambda: cached_features(tmp, reps, args.quick))
        results["cached_features_speedup"] = cf.pop("speedup")
        results.update({f"cached_resnet18_32_{k}": v for k, v in cf.items()})

        dr = step("device_resident", lambda: device_resident(reps, args.quick))
        results["device_resident_speedup"] = dr.pop("speedup")
        results.update({f"device_resident_{k}": v for k, v in dr.items()})
        notes.append(
            f"device_resident_speedup: crop/flip (pad {dr['augment_pad']}), glyphs subset, "
            f"num_per_class={GLYPHS_PER_CLASS_CPU} ({dr['train_images']} training images), not the full 62,000"
        )

        fo = step("folders", lambda: folder_figures(tmp, reps, args.quick))
        results["folder_stream_images_per_second"] = fo.pop("stream_ratio")
        results["folder_cache_speedup"] = fo.pop("cache_speedup")
        results.update({f"folder_{k}": v for k, v in fo.items()})
        notes.append(
            f"folders: {fo['images']:.0f} JPEGs 298x224 -> imagenet recipe at 224 px; images/s from the disk cache "
            f"{fo['cached_images_per_second']:.0f} (built once in {fo['cache_build_seconds']:.1f} s), torchvision's "
            f"ImageFolder + DataLoader {fo['torchvision_images_per_second']:.0f}, trainwise decoding per batch "
            f"{fo['decoded_images_per_second']:.0f} ({fo['decoded_over_torchvision_ratio']:.2f} x torchvision; on "
            f"1600x1200 photos {fo['photo_decoded_over_torchvision_ratio']:.2f} x; their cache "
            f"{fo['photo_cache_speedup']:.1f} x decoding, "
            f"{fo['photo_cached_over_torchvision_ratio']:.1f} x torchvision)"
        )

        if not args.skip_demo:
            demo = step("demo", lambda: demo_seconds(tmp))
            results["demo_seconds"] = demo["seconds"]
            results["demo_glyphs_cache_warm"] = demo["glyphs_cache_warm"]
            results["demo_exit_code"] = demo["exit_code"]
            notes.append(f"demo_seconds: glyphs cache {'warm' if demo['glyphs_cache_warm'] else 'cold (generated)'}")

        if args.gpu:
            results.update(step("gpu", lambda: gpu_figures(tmp, reps, args.quick)))

    results["bench_seconds"] = time.perf_counter() - started
    _show(results, notes)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
