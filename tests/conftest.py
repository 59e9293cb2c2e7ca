"""Shared fixtures: tiny MNIST-format data sets written as real IDX files, and the real archives.

The tiny set holds digits drawn with Pillow's font (random size, slant and position), so a model
can actually learn it in a second and tests can assert on accuracy, not only on shapes.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

REAL_MNIST = Path(os.environ.get("DIGITS_MNIST_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "mnist"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format MNIST uses (magic 0x08 = unsigned byte)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def render_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` MNIST-like images (white digit on black, 28x28) with their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    fonts = {size: ImageFont.load_default(size=size) for size in range(16, 25)}
    for i, label in enumerate(labels):
        canvas = Image.new("L", (28, 28))
        centre = (14 + rng.integers(-2, 3), 14 + rng.integers(-2, 3))
        ImageDraw.Draw(canvas).text(centre, str(label), fill=255, font=fonts[int(rng.integers(16, 25))], anchor="mm")
        images[i] = np.asarray(canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR))
    return images, labels


def write_tiny_mnist(root: Path, n_train: int = 1200, n_test: int = 300) -> Path:
    """`root/MNIST/raw/` with the four uncompressed files torchvision parses; returns `root`."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = render_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    """A data_dir in torchvision's layout holding a tiny, learnable MNIST (1,200 train, 300 test)."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def real_mnist() -> Path:
    """The folder of the four official archives; tests that need real MNIST skip without it."""
    if not all((REAL_MNIST / f).exists() for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")):
        pytest.skip(f"real MNIST archives not found in {REAL_MNIST} (set DIGITS_MNIST_DIR to the folder holding them)")
    return REAL_MNIST


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in a fresh working directory, since checkpoints/ and lightning_logs/ are relative to it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
