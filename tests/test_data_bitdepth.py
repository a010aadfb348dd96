"""16-bit and float images (microscopy, medical, satellite data) keep their values instead of clipping to 8 bits.

The files are real PNG and TIFF files written by PIL into an image folder (one sub-folder per class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import compose_config
from trainwise.data import build_datamodule


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _load(root: Path, channels: int = 1, size: int = 8):
    cfg = compose_config("dataset=imagefolder", f"dataset.root={root}", f"dataset.image_size={size}",
                         f"dataset.channels={channels}", "dataset.test_fraction=0",
                         "dataset.val_fraction=0").dataset  # fmt: skip
    return build_datamodule(cfg, seed=0).data  # decoded: float32 for a set of deep images


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_png_scales_by_its_range(tmp_path, channels):
    _write(tmp_path / "a_mid" / "mid.png", np.full((12, 10), 32768, np.uint16))
    _write(tmp_path / "b_full" / "full.png", np.full((12, 10), 65535, np.uint16))
    # Values an 8-bit conversion would both turn into 0 (or 255): they must stay apart.
    _write(tmp_path / "c_dim" / "dim.png", np.full((8, 8), 100, np.uint16))
    _write(tmp_path / "d_dimmer" / "dimmer.png", np.full((8, 8), 50, np.uint16))
    assert Image.open(tmp_path / "a_mid" / "mid.png").mode == "I;16"  # what PIL makes of a 16-bit PNG
    images = _load(tmp_path, channels).images
    assert images.shape == (4, channels, 8, 8)
    expected = [32768 / 65535, 1.0, 100 / 65535, 50 / 65535]
    for image, value in zip(images, expected, strict=True):
        assert image.min().item() == pytest.approx(value, abs=1e-6) and image.max().item() == pytest.approx(value)


def test_float_tiff_in_unit_range_is_kept_and_others_scale_by_their_min_max(tmp_path):
    gradient = np.linspace(0.0, 1.0, 16, dtype=np.float32).reshape(4, 4)
    _write(tmp_path / "a_unit" / "quarter.tiff", np.full((8, 8), 0.25, np.float32))
    _write(tmp_path / "a_unit" / "gradient.tif", gradient)
    _write(tmp_path / "b_counts" / "counts.tiff", gradient * 4000 - 1000)  # e.g. -1000..3000 (CT units)
    _write(tmp_path / "c_wide" / "wide.tiff", (gradient * 200_000).astype(np.int32))  # 32-bit integers
    assert Image.open(tmp_path / "a_unit" / "quarter.tiff").mode == "F"
    images = _load(tmp_path, size=4).images
    assert images[1, 0].mean().item() == pytest.approx(0.25)
    assert np.allclose(images[0, 0].numpy(), gradient, atol=1e-6)  # gradient.tif sorts first; same size: as is
    assert np.allclose(images[2, 0].numpy(), gradient, atol=1e-6)  # min -> 0, max -> 1
    assert Image.open(tmp_path / "c_wide" / "wide.tiff").mode == "I"  # beyond 16 bits: min -> 0, max -> 1 too
    assert np.allclose(images[3, 0].numpy(), gradient, atol=1e-5)


def test_16bit_images_resize_without_losing_their_depth(tmp_path):
    ramp = np.tile(np.linspace(1000, 3000, 32).astype(np.uint16), (32, 1))  # all below 8-bit's first step
    _write(tmp_path / "ramp" / "ramp.png", ramp)
    images = _load(tmp_path, size=8).images
    row = images[0, 0, 0].numpy() * 65535
    assert 900 < row.min() < row.max() < 3100 and np.all(np.diff(row) > 0)  # still a ramp, in the same range
