"""Shared fixtures: a tiny MNIST-format data set written as real IDX files, and the real archives.

The tiny set holds digits drawn with Pillow's font (random size, slant and position), so a model
can actually learn it in a second and tests can assert on accuracy, not only on shapes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import torch_on_one_thread, write_tiny_mnist

REAL_MNIST = Path(os.environ.get("DIGITS_MNIST_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "mnist"))


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
def one_thread():
    """torch on one thread for the test (`helpers.torch_on_one_thread`)."""
    with torch_on_one_thread():
        yield


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in a fresh working directory, since checkpoints/ and lightning_logs/ are relative to it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_collection_modifyitems(items) -> None:
    """Tests on the real archives train or hash real MNIST: slow, whatever their module."""
    for item in items:
        if "real_mnist" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
