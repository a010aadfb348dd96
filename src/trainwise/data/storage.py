"""Where a folder's decoded images live while a run trains, chosen by `place_files`:

- **memory**: one uint8 (N, C, H, W) tensor (float32 only for 16-bit and float images), when it fits
  `dataset.memory_budget_mb` (auto: a third of the memory available when the run starts). Batches are converted to
  float on the device they train on.
- **disk cache**: beyond the budget, a memory-mapped `.npy` file of the decoded images; each batch reads its rows
  (the operating system's page cache keeps what it can).
- **decode**: beyond the budget with `dataset.cache=false` (or no disk space for the cache), the JPEGs themselves,
  decoded batch by batch in DataLoader worker processes.

The disk cache (`dataset.cache`, default true) is built once per folder and decode settings, under
`$TRAINWISE_CACHE/images/`: every later run of a sweep, and every epoch, reads decoded pixels instead of decoding
JPEGs again. Its name is a hash of the file list (paths, sizes, modification times) and the decode settings, so a
changed, added or removed file gives a new cache. Parallel jobs build it once (a file lock); a folder that changes
while it is being built stops the run with one line.

Written here because neither torchvision nor Lightning keeps decoded images between runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainwise.data.imagefolder import ImageFiles, decode_image
from trainwise.errors import UserError

log = logging.getLogger("trainwise")

CACHE_VERSION = 1  # bump when decode_image's output changes for the same settings
MEMORY_SHARE = 1 / 3  # memory_budget_mb=auto: this share of the memory available when the run starts


@dataclass(frozen=True)
class Decode:
    """How the files become arrays: channels, square size, fit (squash/crop), interpolation, dtype."""

    channels: int
    size: int
    fit: str = "squash"
    interpolation: str = "bilinear"
    dtype: str = "uint8"

    def __call__(self, path: Path) -> np.ndarray:
        """(C, size, size) in self.dtype; uint8 images in a float32 set are scaled to [0, 1], deep images in a
        uint8 set rounded to 0-255."""
        pixels = decode_image(path, self.channels, self.size, self.fit, self.interpolation)
        pixels = np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (so np.stack of them is C-contiguous too)
        if self.dtype == "uint8" and pixels.dtype != np.uint8:
            return np.rint(pixels * 255.0).astype(np.uint8)
        if self.dtype == "float32" and pixels.dtype == np.uint8:
            return pixels.astype(np.float32) / 255.0
        return pixels


class CachedImages:
    """Decoded images in a `.npy` file, read a batch of rows at a time with `os.pread` (the page cache keeps what
    it can; nothing is mapped into the process, so its memory stays what one batch takes). Pickled by path:
    DataLoader workers open the file themselves."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = Path(path), key
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            self.shape, _fortran, self.dtype = read_header(f)
            self.offset = f.tell()
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None

    def __getstate__(self):
        return self.__dict__ | {"_fd": None}

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        rows = np.asarray(index).reshape(-1)
        batch = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = batch.reshape(len(rows), -1).view(np.uint8)
        for i in np.argsort(rows, kind="stable"):  # ascending offsets: sequential reads where the batch allows
            flat[i] = np.frombuffer(os.pread(self._fd, self.row_bytes, self.offset + int(rows[i]) * self.row_bytes),
                                    dtype=np.uint8)  # fmt: skip
        return torch.from_numpy(batch)

    def load(self) -> torch.Tensor:
        """The whole file in memory."""
        return torch.from_numpy(np.load(self.path))

    def digest(self) -> str:
        return self.key[:16]


class DecodedFiles:
    """The image files, decoded when a batch of them is asked for (in a DataLoader worker)."""

    def __init__(self, paths: list[Path], decode: Decode, key: str):
        self.paths, self.decode, self.key = paths, decode, key
        self.shape = (len(paths), decode.channels, decode.size, decode.size)
        self.dtype = np.dtype(decode.dtype)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.decode(self.paths[int(i)]) for i in index]))

    def digest(self) -> str:
        return self.key[:16]


def place_files(files: ImageFiles, data_cfg, decode: Decode):
    """(images, where, bad): the decoded images as a tensor in memory, a CachedImages or a DecodedFiles; which of
    'memory', 'disk_cache', 'decode' that is; and the indices of the files that could not be read (left black;
    only with dataset.skip_bad_images=true, and only where the images are decoded up front: memory or cache)."""
    skip = bool(data_cfg.get("skip_bad_images", False))
    key = cache_key(files, decode)
    nbytes = len(files.paths) * decode.channels * decode.size**2 * np.dtype(decode.dtype).itemsize
    budget = memory_budget(data_cfg)
    cached, bad = build_cache(files, decode, key, data_cfg, skip) if data_cfg.get("cache", True) else (None, [])
    if bad and not skip:  # a cache an earlier run built with skip_bad_images=true
        raise UserError(
            f"dataset.root: cannot read image {files.paths[bad[0]]} ({len(bad)} unreadable in all); fix or remove "
            "the files, or set dataset.skip_bad_images=true to train without them"
        )
    if nbytes <= budget:
        if cached is not None:
            return CachedImages(cached, key).load(), "memory", bad
        out = np.empty((len(files.paths), decode.channels, decode.size, decode.size), dtype=decode.dtype)
        bad = [] if skip else None
        for start, chunk in decode_chunks(files.paths, decode, bad=bad):
            out[start : start + len(chunk)] = chunk
        return torch.from_numpy(out), "memory", sorted(bad or [])
    mb = nbytes / 2**20
    if cached is not None:
        log.info("data: %.1f MB of decoded images exceed the memory budget (%.1f MB): read from %s", mb,
                 budget / 2**20, cached)  # fmt: skip
        return CachedImages(cached, key), "disk_cache", bad
    log.info("data: %.1f MB of decoded images exceed the memory budget (%.1f MB): decoded per batch", mb,
             budget / 2**20)  # fmt: skip
    return DecodedFiles(files.paths, decode, key), "decode", []


class RowSubset:
    """Some rows of a set of images (those left after skipping unreadable files), indexed as a whole set."""

    def __init__(self, images, rows: np.ndarray):
        self.images, self.rows = images, torch.as_tensor(rows, dtype=torch.long)
        self.shape = (len(rows), *images.shape[1:])
        self.dtype = images.dtype

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return self.images.nbytes * len(self.rows) // max(1, len(self.images))

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[self.rows[index]]

    def digest(self) -> str:
        return hashlib.sha256(f"{self.images.digest()}{self.rows.tolist()}".encode()).hexdigest()[:16]


def memory_budget(data_cfg) -> int:
    """dataset.memory_budget_mb in bytes (auto: MEMORY_SHARE of the available memory). A budget above what the
    machine has available is a UserError: it would end in swapping or the kernel killing the run."""
    import psutil

    available = psutil.virtual_memory().available
    value = data_cfg.get("memory_budget_mb", "auto")
    if value == "auto":
        return int(MEMORY_SHARE * available)
    budget = int(value) * 2**20
    if budget > available:
        raise UserError(
            f"dataset.memory_budget_mb={value} is more than the {available // 2**20} MB of memory available; "
            "lower it, or set it to auto"
        )
    return budget


def cache_key(files: ImageFiles, decode: Decode) -> str:
    """A hash of every file's path (relative to the root), size and modification time, and the decode settings."""
    hasher = hashlib.sha256(json.dumps([CACHE_VERSION, decode.__dict__]).encode())
    for path in files.paths:
        try:
            stat = path.stat()
        except OSError:
            raise UserError(
                f"dataset.root={files.root}: {path} disappeared; run again once the folder is complete"
            ) from None
        hasher.update(f"{path.relative_to(files.root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return hasher.hexdigest()


def cache_folder(data_cfg) -> Path:
    from trainwise.paths import cache_dir

    configured = data_cfg.get("cache_dir")
    return Path(str(configured)).expanduser() if configured else cache_dir() / "images"


def build_cache(files: ImageFiles, decode: Decode, key: str, data_cfg, skip: bool = False):
    """(the cache file for `key`, decoded now if no run made it before, or None with a warning when the disk lacks
    the space; the indices of unreadable files, left black, recorded beside it in <name>.bad.json when `skip`)."""
    from filelock import FileLock

    folder = cache_folder(data_cfg)
    path = folder / f"{key[:32]}.npy"
    if path.is_file():
        return path, _bad_rows(path)
    shape = (len(files.paths), decode.channels, decode.size, decode.size)
    nbytes = int(np.prod(shape)) * np.dtype(decode.dtype).itemsize
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as error:
        raise UserError(f"dataset.cache_dir={folder}: cannot write there ({error}); set another folder") from None
    if nbytes > 0.9 * free:
        print(f"warning: the decoded-image cache would take {nbytes / 2**30:.1f} GB and {folder} has "
              f"{free / 2**30:.1f} GB free: decoding every epoch instead (set dataset.cache_dir=<a larger disk>)",
              flush=True)  # fmt: skip
        return None, []
    with FileLock(str(path) + ".lock"):
        if path.is_file():  # another job built it while this one waited
            return path, _bad_rows(path)
        partial = path.with_suffix(".partial.npy")
        say = print if len(files.paths) >= 2000 else log.info  # (a few seconds or more: tell the user why)
        say(f"Decoding {len(files.paths):,} images into the cache {path} ({nbytes / 2**20:.0f} MB) ...")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(decode.dtype)), "fortran_order": False,
                  "shape": shape}  # fmt: skip
        bad: list[int] | None = [] if skip else None
        try:
            with open(partial, "wb") as f:  # written a chunk at a time: never the whole set in memory
                np.lib.format.write_array_header_1_0(f, header)
                for _start, chunk in decode_chunks(files.paths, decode, bad=bad):
                    f.write(memoryview(chunk))  # (np.stack's result is C-contiguous: no copy)
            if cache_key(files, decode) != key:
                raise UserError(
                    f"dataset.root={files.root} changed while its images were being decoded; run again once it is "
                    "complete"
                )
            if bad:
                path.with_suffix(".bad.json").write_text(json.dumps(sorted(bad)))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return path, sorted(bad or [])


def _bad_rows(path: Path) -> list[int]:
    sidecar = path.with_suffix(".bad.json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else []


def decode_chunks(paths: list[Path], decode: Decode, chunk_bytes: int = 16 * 2**20, bad: list[int] | None = None):
    """(start, array of decoded images) in order, about `chunk_bytes` at a time. PIL releases the GIL while it
    decodes and resizes, so threads use every core. bad: None, an unreadable file is a UserError; a list, its
    index is added there and its image left black."""
    image_bytes = decode.channels * decode.size**2 * np.dtype(decode.dtype).itemsize
    chunk = max(1, min(512, chunk_bytes // image_bytes))

    def one(i: int) -> np.ndarray:
        try:
            return decode(paths[i])
        except UserError:
            if bad is None:
                raise
            bad.append(i)
            return np.zeros((decode.channels, decode.size, decode.size), dtype=decode.dtype)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), chunk):
            yield start, np.stack(list(pool.map(one, range(start, min(len(paths), start + chunk)))))
