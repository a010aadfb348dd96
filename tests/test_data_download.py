"""A torchvision set is downloaded once when several processes (DDP ranks, parallel jobs) prepare it at once.

No network: each process replaces torchvision's download-and-extract step with one that writes small, valid MNIST
files slowly (so the processes overlap) and records every call. torchvision's own checks, and trainwise's
preparation of the set, run as for real. The processes are forked (starting fresh ones would import torch and
Lightning again, ~10 s each on a busy machine).
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets.mnist
from omegaconf import OmegaConf

from trainwise.data.torchvision_sets import load_torchvision

MNIST_FILES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
               "train-labels-idx1-ubyte.gz"]  # fmt: skip


def _prepare(root: Path, calls: Path, start, results) -> None:
    """One process: prepares MNIST through trainwise with a recording stand-in for the download."""
    torch.set_num_threads(1)  # a forked child: no OpenMP pool inherited from the parent (as DataLoader workers do)

    def stand_in(url, download_root, filename=None, md5=None, **kwargs):
        with open(calls, "a") as fh:
            fh.write(f"{os.getpid()} {filename}\n")
        name = filename.removesuffix(".gz")
        n = 30 if name.startswith("train") else 10
        array = (np.arange(n * 28 * 28) % 251).reshape(n, 28, 28) if "images" in name else np.arange(n) % 10
        header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
        Path(download_root, name).write_bytes(header + array.astype(np.uint8).tobytes())
        time.sleep(0.25)  # a real download takes a while: the other process starts meanwhile

    torchvision.datasets.mnist.download_and_extract_archive = stand_in
    start.wait(timeout=60)  # both prepare the set at the same moment
    data = load_torchvision(OmegaConf.create({"name": "mnist", "root": str(root), "download": True}))
    results.put((len(data.labels), int(data.test_mask.sum())))


def test_processes_preparing_the_same_set_download_it_once(tmp_path):
    calls, root = tmp_path / "calls.txt", tmp_path / "data"
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    children = [context.Process(target=_prepare, args=(root, calls, start, results)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0]
    assert [results.get(timeout=5) for _ in children] == [(40, 10), (40, 10)]  # both read the same 30 + 10 images
    lines = calls.read_text().splitlines()
    downloaders = {line.split()[0] for line in lines}
    assert len(downloaders) == 1, f"{len(downloaders)} processes downloaded: {lines}"
    assert sorted(line.split()[1] for line in lines) == MNIST_FILES
