"""Real datasets, loaded from small files written in their true on-disk formats (nothing is downloaded).

torchvision's own MNIST/CIFAR classes read these files; the image folder goes through PIL with every mode,
size and extension case users throw at it.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import compose_config, mlflow_client, run_job
from trainwise.data import ImageTensors, TensorDataModule, build_datamodule
from trainwise.data.imagefolder import decode_image
from trainwise.data.torchvision_sets import data_root
from trainwise.errors import UserError

TORCHVISION_SETS = ["mnist", "fashion_mnist", "cifar10", "cifar100"]


def _datamodule(*overrides: str, seed: int = 0) -> TensorDataModule:
    return build_datamodule(compose_config(*overrides).dataset, seed=seed)


def _pattern(n: int, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """Distinct, known uint8 images: every pixel of image i is (i + offset) * 3 mod 256, plus a gradient."""
    base = (np.arange(n)[:, None] + offset) * 3 + np.arange(int(np.prod(shape)))[None, :] % 7
    return (base % 256).astype(np.uint8).reshape(n, *shape)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST: raw idx files


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: magic (0, 0, type 0x08 = uint8, number of dims), big-endian int32 sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"  # where torchvision's MNIST/FashionMNIST look (uncompressed, no md5 check)
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": _pattern(n_train, (28, 28), 0),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": _pattern(n_test, (28, 28), 100),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) + 3) % 10,
    }
    for name, array in arrays.items():
        _write_idx(raw / name, array)
    return arrays


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats_load_with_their_official_split(tmp_path, name, folder):
    arrays = _write_mnist(tmp_path, folder)
    dm = _datamodule(
        f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=false", "dataset.val_fraction=0.25"
    )
    data = dm.data
    assert data.images.shape == (60, 1, 28, 28) and data.images.dtype == torch.float32
    assert len(data.class_names) == 10 and dm.num_classes == 10
    # Train images first, then the official test split, which is exactly the test set (test_fraction unused).
    expected = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])
    assert torch.equal(data.images[:, 0], torch.from_numpy(expected).float() / 255)
    labels = np.concatenate([arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]])
    assert data.labels.tolist() == labels.tolist()
    assert dm.test_idx.tolist() == list(range(40, 60))
    assert dm.sizes() == {"train": 30, "val": 10, "test": 20}
    assert np.bincount(labels[dm.val_idx], minlength=10).tolist() == [1] * 10  # stratified
    assert not set(dm.val_idx) & set(dm.train_idx) and max(dm.train_idx) < 40


def test_official_split_is_fixed_and_survives_resizing_and_val_on_test(tmp_path):
    _write_mnist(tmp_path, "MNIST")
    base = ("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false", "dataset.val_fraction=0.25")
    first, again = _datamodule(*base), _datamodule(*base, seed=1)
    assert first.val_idx.tolist() == again.val_idx.tolist() and first.test_idx.tolist() == again.test_idx.tolist()

    resized = _datamodule(*base, "dataset.image_size=16")
    assert resized.input_shape == (1, 16) and resized.test_idx.tolist() == first.test_idx.tolist()
    # A pretrained model's input shape (colour, larger) keeps the official split too.
    forced = build_datamodule(compose_config(*base).dataset, seed=0, input_shape=(3, 32))
    assert forced.input_shape == (3, 32) and forced.test_idx.tolist() == first.test_idx.tolist()

    on_test = _datamodule(*base, "dataset.val_on_test=true")
    assert on_test.val_idx.tolist() == on_test.test_idx.tolist() == list(range(40, 60))
    assert on_test.sizes()["train"] == 40


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100: python pickles


def _write_pickle(path: Path, payload: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(payload, fh)


def _write_cifar(root: Path, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 'python version' layout: pickled dicts with 'data' (N, 3072) uint8 rows, channel-major (R, G, B planes)."""
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
        label_key, per_file = "labels", 6
        classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        meta_name, meta = "batches.meta", {"label_names": classes, "num_cases_per_batch": per_file}
    else:
        folder, files, label_key, per_file = root / "cifar-100-python", ["train", "test"], "fine_labels", 30
        classes = [f"class_{i:02d}" for i in range(100)]
        meta_name, meta = "meta", {"fine_label_names": classes, "coarse_label_names": [f"super_{i}" for i in range(20)]}
    folder.mkdir(parents=True)
    images, labels = [], []
    for k, file_name in enumerate(files):
        n = 10 if k == len(files) - 1 else per_file  # the last file is the test split
        data = _pattern(n, (3, 32, 32), 10 * k)
        targets = [(7 * k + i) % len(classes) for i in range(n)]
        payload = {"data": data.reshape(n, 3072), label_key: targets, "filenames": [f"{i}.png" for i in range(n)]}
        if name == "cifar100":
            payload["coarse_labels"] = [t // 5 for t in targets]
        _write_pickle(folder / file_name, payload)
        images.append(data)
        labels += targets
    _write_pickle(folder / meta_name, meta)
    return np.concatenate(images), np.array(labels), classes


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """torchvision checks the CIFAR files against the md5 sums of the real downloads, which small test files
    cannot match. Only that comparison is replaced (files must still exist); torchvision's own file checks,
    unpickling, reshaping and metadata loading all run as for real data."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles_load_with_their_official_split(tmp_path, name, skip_cifar_md5):
    images, labels, classes = _write_cifar(tmp_path, name)
    n_train = len(images) - 10
    dm = _datamodule(f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=false")
    assert dm.data.images.shape == (len(images), 3, 32, 32)
    assert torch.equal(dm.data.images, torch.from_numpy(images).float() / 255)  # NCHW, channels as written
    assert dm.data.labels.tolist() == labels.tolist()
    assert dm.data.class_names == classes and dm.num_classes == len(classes)
    assert dm.test_idx.tolist() == list(range(n_train, len(images)))
    sizes = dm.sizes()
    assert sizes["test"] == 10 and sizes["train"] + sizes["val"] == n_train and sizes["val"] >= 1


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_missing_files_with_download_off_name_the_folder(tmp_path, name):
    expected = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py",
                "cifar100": "cifar-100-python"}[name]  # fmt: skip
    with pytest.raises(UserError) as error:
        _datamodule(f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=false")
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / expected) in message
    assert "dataset.download=true" in message and "dataset.root=" in message


def test_files_already_there_are_read_without_the_download_lock(tmp_path):
    _write_mnist(tmp_path, "MNIST")
    dm = _datamodule("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=true")
    assert dm.sizes()["test"] == 20
    assert not list(tmp_path.glob(".*lock"))  # nothing written: a shared, read-only dataset folder works


def test_default_root_is_trainwise_data_then_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINWISE_DATA", str(tmp_path / "datasets"))
    assert data_root() == tmp_path / "datasets" and data_root(str(tmp_path / "x")) == tmp_path / "x"
    with pytest.raises(UserError, match=str(tmp_path / "datasets" / "MNIST")):
        _datamodule("dataset=mnist", "dataset.download=false")
    monkeypatch.delenv("TRAINWISE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "trainwise" / "data"


# ---------------------------------------------------------------- image folders


def _save(path: Path, image: Image.Image, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)


def _palette_image(size: tuple[int, int], colour: tuple[int, int, int], transparent: bool = False) -> Image.Image:
    image = Image.new("P", size, 1)
    image.putpalette([0, 0, 0, *colour] + [0] * (256 - 2) * 3)
    if transparent:
        image.info["transparency"] = 0
    return image


def _mixed_class(folder: Path, grey: int) -> None:
    """Four images of every mode and several sizes, upper-case extensions, and files that are not images."""
    _save(folder / "a_gray.png", Image.new("L", (20, 13), grey))
    _save(folder / "b_rgb.JPG", Image.new("RGB", (40, 30), (grey, grey, grey)), "JPEG")
    _save(folder / "c_rgba.PNG", Image.new("RGBA", (9, 9), (grey, grey, grey, 128)))
    _save(folder / "d_palette.png", _palette_image((17, 25), (grey, grey, grey), transparent=True))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\1")
    _save(folder / ".ipynb_checkpoints" / "stale.png", Image.new("L", (8, 8), 0))  # hidden: skipped


def _flat_folder(root: Path) -> Path:
    for grey, name in ((40, "cat"), (120, "dog"), (200, "fox")):
        _mixed_class(root / name, grey)
        _mixed_class(root / name / "more", grey)  # nested folders count, like torchvision's ImageFolder
    (root / "README.txt").write_text("stray file beside the class folders")
    return root


def _split_folder(root: Path, splits=("train", "val", "test"), counts=(6, 2, 3)) -> Path:
    colours = {"train": (255, 0, 0), "val": (0, 255, 0), "validation": (0, 255, 0), "test": (0, 0, 255)}
    for split, count in zip(splits, counts, strict=True):
        for name in ("ant", "bee"):
            for i in range(count):
                size = (10 + 3 * i, 12)
                _save(root / split / name / f"{i}.png", Image.new("RGB", size, colours[split]))
    return root


def test_decode_handles_every_mode_size_and_extension_case(tmp_path):
    _mixed_class(tmp_path, 200)
    for name in ("a_gray.png", "b_rgb.JPG", "c_rgba.PNG", "d_palette.png"):
        rgb = decode_image(tmp_path / name, channels=3, size=16)
        grey = decode_image(tmp_path / name, channels=1, size=8)
        assert rgb.shape == (16, 16, 3) and grey.shape == (8, 8, 1) and rgb.dtype == np.uint8
        assert abs(int(rgb.mean()) - 200) <= 3 and abs(int(grey.mean()) - 200) <= 3, name


def test_flat_class_folders_split_stratified_and_deterministically(tmp_path):
    root = _flat_folder(tmp_path / "animals")
    overrides = ("dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=16")
    dm = _datamodule(*overrides, "dataset.test_fraction=0.25", "dataset.val_fraction=0.2")
    assert dm.data.class_names == ["cat", "dog", "fox"] and dm.num_classes == 3
    # Held as uint8 (a quarter of float32's memory); batches become float on the device.
    assert dm.data.images.shape == (24, 3, 16, 16) and dm.data.images.dtype == torch.uint8
    assert dm.data.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    # Every image of a class has that class's grey level, whatever its mode, size or extension.
    means = dm.data.images.float().mean(dim=(1, 2, 3))
    assert torch.allclose(means, torch.tensor([40.0, 120.0, 200.0]).repeat_interleave(8), atol=4)
    assert dm.sizes() == {"train": 14, "val": 4, "test": 6}
    assert np.bincount(dm.data.labels.numpy()[dm.test_idx]).tolist() == [2, 2, 2]  # stratified
    assert len(set(dm.train_idx) | set(dm.val_idx) | set(dm.test_idx)) == 24

    again = _datamodule(*overrides, "dataset.test_fraction=0.25", "dataset.val_fraction=0.2", seed=3)
    assert again.test_idx.tolist() == dm.test_idx.tolist() and again.val_idx.tolist() == dm.val_idx.tolist()
    assert torch.equal(again.data.images, dm.data.images)
    reshuffled = _datamodule(*overrides, "dataset.test_fraction=0.25", "dataset.val_fraction=0.2",
                             "dataset.split_seed=1")  # fmt: skip
    assert reshuffled.test_idx.tolist() != dm.test_idx.tolist()

    grey = _datamodule(*overrides, "dataset.channels=1")
    assert grey.input_shape == (1, 16)


def test_train_val_test_folders_are_the_splits(tmp_path):
    root = _split_folder(tmp_path / "insects")
    dm = _datamodule("dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=8")
    assert dm.data.class_names == ["ant", "bee"]
    assert dm.sizes() == {"train": 12, "val": 4, "test": 6}
    images = dm.data.images
    for indices, channel in ((dm.train_idx, 0), (dm.val_idx, 1), (dm.test_idx, 2)):  # red, green, blue per split
        assert torch.all(images[indices, channel] > 0.99), channel

    half = _datamodule("dataset=imagefolder", f"dataset.root={root}", "dataset.train_fraction=0.5")
    assert half.sizes() == {"train": 6, "val": 4, "test": 6}


def test_train_and_val_folders_draw_the_test_split_from_train(tmp_path):
    root = _split_folder(tmp_path / "insects", splits=("train", "validation"), counts=(10, 2))
    dm = _datamodule("dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=8", "dataset.test_fraction=0.2")
    assert dm.sizes() == {"train": 16, "val": 4, "test": 4}
    assert torch.all(dm.data.images[dm.val_idx, 1] > 0.99) and torch.all(dm.data.images[dm.test_idx, 0] > 0.99)


def _make_no_class_folders(root: Path) -> None:
    root.mkdir()
    _save(root / "loose.png", Image.new("L", (4, 4)))


def _make_empty_class(root: Path) -> None:
    _mixed_class(root / "cat", 10)
    (root / "dog").mkdir()
    (root / "dog" / "notes.txt").write_text("no images here")


def _make_unknown_val_class(root: Path) -> None:
    _split_folder(root, splits=("train", "val"), counts=(2, 1))
    _save(root / "val" / "wasp" / "0.png", Image.new("RGB", (4, 4)))


def _make_broken_image(root: Path) -> None:
    _mixed_class(root / "cat", 10)
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")


@pytest.mark.parametrize(
    "make,root_value,expected",
    [
        (None, None, "dataset.root is not set"),
        (None, "missing", "does not exist"),
        (lambda root: root.write_text("x"), "a_file", "is not a folder"),
        (lambda root: root.mkdir(), "empty", "is empty"),
        (_make_no_class_folders, "flat", "no class folders"),
        (_make_empty_class, "cls", r"dog hold no images"),
        (_make_unknown_val_class, "split", "val/wasp is not in train/"),
        (_make_broken_image, "bad", "cannot read image .*broken.jpg"),
    ],
)
def test_image_folder_errors_are_one_line_user_errors(tmp_path, make, root_value, expected):
    overrides = ["dataset=imagefolder"]
    if root_value is not None:
        root = tmp_path / root_value
        if make is not None:
            make(root)
        overrides.append(f"dataset.root={root}")
    with pytest.raises(UserError, match=expected) as error:
        _datamodule(*overrides)
    assert "\n" not in str(error.value) and "dataset.root" in str(error.value)


def test_image_folder_channels_must_be_one_or_three(tmp_path):
    root = _split_folder(tmp_path / "insects")
    with pytest.raises(UserError, match="dataset.channels=2"):
        _datamodule("dataset=imagefolder", f"dataset.root={root}", "dataset.channels=2")


# ---------------------------------------------------------------- the datamodule's predefined splits


def test_predefined_masks_replace_the_fractions():
    labels = torch.arange(40) % 4
    test_mask = torch.arange(40) >= 32
    val_mask = (torch.arange(40) >= 24) & ~test_mask
    cfg = compose_config("dataset.test_fraction=0.5", "dataset.val_fraction=0.5").dataset
    data = ImageTensors(torch.rand(40, 1, 8, 8), labels, list("abcd"), test_mask=test_mask, val_mask=val_mask)
    dm = TensorDataModule(data, cfg, seed=0)
    assert dm.test_idx.tolist() == list(range(32, 40)) and dm.val_idx.tolist() == list(range(24, 32))
    assert dm.train_idx.tolist() == list(range(24))
    # Only a val mask: the test split is drawn (stratified, by split_seed) from what is not validation.
    only_val = TensorDataModule(ImageTensors(data.images, labels, list("abcd"), val_mask=val_mask), cfg, seed=0)
    assert only_val.val_idx.tolist() == list(range(24, 32)) and len(only_val.test_idx) == 16
    assert not set(only_val.test_idx) & set(range(24, 32)) and len(only_val.train_idx) == 16


# ---------------------------------------------------------------- end to end


def test_an_image_folder_trains_end_to_end(tmp_path, store_uri):
    root = _flat_folder(tmp_path / "animals")
    result = run_job(tmp_path, store_uri, "dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=16")
    run = mlflow_client(store_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "scratch-small_cnn-imagefolder"
    assert run.data.params["data.num_classes"] == "3"
    assert run.data.params["dataset.root"] == str(root)
    assert 0.0 <= result.metrics["test/acc"] <= 1.0


def test_a_fine_tune_that_shrinks_colour_photos_to_its_foundations_input_says_so(tmp_path, store_uri, capsys):
    """RGB photos at 32 px fine-tuned from the default glyphs foundation (1x8x8): one warning line naming a better
    source, and the run records the input it saw."""
    root = _split_folder(tmp_path / "photos")
    overrides = ("strategy=finetune", "dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=32")
    result = run_job(tmp_path, store_uri, *overrides)
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if line.startswith("warning: the foundation takes 1x8x8")]
    assert warning and "without its colour and 94 % of its pixels" in warning[0] and "source=imagefolder" in warning[0]
    client = mlflow_client(store_uri)
    assert client.get_run(result.run_id).data.tags["trainwise.input"] == "1x8x8"
    scratch = run_job(tmp_path / "scratch", store_uri, *overrides[1:])
    assert client.get_run(scratch.run_id).data.tags["trainwise.input"] == "3x32x32"
    assert "warning: the foundation" not in capsys.readouterr().out
