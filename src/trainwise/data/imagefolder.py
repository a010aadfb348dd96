"""Your own images on disk, one folder per class (like Keras' `flow_from_directory` and torchvision's ImageFolder).

Two layouts under `dataset.root`:

    root/<class>/*.jpg                       one pool; test and val are drawn from it by test_fraction and
                                             val_fraction (stratified, fixed by split_seed)
    root/train/<class>/*.jpg                 predefined splits: val/ (or validation/) is the validation set,
    root/val/<class>/*.jpg                   test/ the test set; a split without a folder is drawn from
    root/test/<class>/*.jpg   (optional)     train/ by its fraction

Every image is decoded once with PIL (any size; modes L, RGB, RGBA, P, ...; EXIF rotation applied), converted to
`dataset.channels` (1 or 3) and resized to a `dataset.image_size` square, so the whole set sits in memory as one
tensor. Files without an image extension (any case: .jpg, .JPG, .png, ...) are skipped, as are hidden entries.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from trainwise.data.datamodule import ImageTensors
from trainwise.errors import UserError

# torchvision.datasets.folder.IMG_EXTENSIONS (kept here so that listing a folder does not import torchvision).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
EXPECTED = "one sub-folder of images per class (or train/ and val/ sub-folders that each hold the class folders)"


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    """Image files anywhere below `folder`, in a fixed order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / name for name in sorted(filenames) if is_image_file(Path(name)))
    return found


def _check_root(root_value) -> Path:
    if not root_value:
        raise UserError(
            f"dataset.root is not set: point it at a folder holding {EXPECTED}, e.g. dataset.root=~/flowers"
        )
    root = Path(str(root_value)).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UserError(f"dataset.root={root} {what}; expected a folder holding {EXPECTED}")
    if not any(not p.name.startswith(".") for p in root.iterdir()):
        raise UserError(f"dataset.root={root} is empty; expected {EXPECTED}")
    return root


def _split_folders(root: Path) -> dict[str, Path] | None:
    """{'train': ..., 'val': ..., 'test': ...} when root holds split folders (train/ at least), else None."""
    folders = _subfolders(root)
    names = {p.name.lower() for p in folders}
    if "train" not in names or not names <= set(SPLIT_FOLDERS):
        return None
    splits: dict[str, Path] = {}
    for folder in folders:
        split = SPLIT_FOLDERS[folder.name.lower()]
        if split in splits:
            raise UserError(f"dataset.root={root} has both {splits[split].name}/ and {folder.name}/; keep one")
        splits[split] = folder
    return {split: splits[split] for split in ("train", "val", "test") if split in splits}


def list_images(root: Path) -> tuple[list[Path], list[int], list[str], list[str]]:
    """(paths, labels, split of each image: 'pool'/'train'/'val'/'test', class names) with the checks users need."""
    splits = _split_folders(root) or {"pool": root}
    class_names = [p.name for p in _subfolders(splits.get("train", root))]
    if not class_names:
        where = splits["train"] if "train" in splits else root
        files = sum(1 for p in where.iterdir() if p.is_file())
        raise UserError(
            f"dataset.root={root}: {where} holds no class folders ({files} loose files); expected {EXPECTED}"
        )
    index = {name: i for i, name in enumerate(class_names)}
    paths: list[Path] = []
    labels: list[int] = []
    split_of: list[str] = []
    for split, folder in splits.items():
        empty = []
        for class_folder in _subfolders(folder):
            if class_folder.name not in index:
                raise UserError(
                    f"dataset.root={root}: class folder {split}/{class_folder.name} is not in train/ "
                    f"(classes: {', '.join(class_names)}); every class needs training images"
                )
            found = _images_in(class_folder)
            if not found:
                empty.append(class_folder.relative_to(root).as_posix())
            paths += found
            labels += [index[class_folder.name]] * len(found)
            split_of += [split] * len(found)
        if empty:
            raise UserError(
                f"dataset.root={root}: class folder(s) {', '.join(empty)} hold no images "
                f"({', '.join(IMG_EXTENSIONS)}); add images or remove the folders"
            )
    return paths, labels, split_of, class_names


def decode_image(path: Path, channels: int, size: int) -> np.ndarray:
    """One image as uint8 (size, size, channels)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.draft("L" if channels == 1 else "RGB", (size, size))  # JPEG: decode at a reduced scale, fast
            img = ImageOps.exif_transpose(img)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # what PIL asks for before dropping a palette's transparency
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)  # PIL antialiases when shrinking
            return np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"dataset.root: cannot read image {path} ({error}); fix or remove the file") from error


def load_imagefolder(cfg) -> ImageTensors:
    root = _check_root(cfg.get("root"))
    channels, size = int(cfg.get("channels", 3)), int(cfg.image_size)
    if channels not in (1, 3):
        raise UserError(f"dataset.channels={channels} must be 1 (grayscale) or 3 (RGB)")
    paths, labels, split_of, class_names = list_images(root)
    # PIL releases the GIL while it decodes and resizes, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda p: decode_image(p, channels, size), paths))
    images = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    split = np.array(split_of)
    test_mask = torch.from_numpy(split == "test") if "test" in split_of else None
    val_mask = torch.from_numpy(split == "val") if "val" in split_of else None
    return ImageTensors(images, torch.tensor(labels, dtype=torch.long), class_names, test_mask, val_mask)
