"""What several test modules share: MNIST-format files written here, digits drawn with Pillow, and a
model trained on the tiny data set through the real CLI."""

from __future__ import annotations

import gzip
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont


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


def write_tiny_archives(folder: Path, n_train: int = 1200, n_test: int = 300) -> tuple[dict, dict]:
    """The tiny set as the four `.gz` archives with MNIST's file names, directly in `folder` (the
    layout of a downloaded or shared archive folder); returns each archive's MD5, and each
    extracted file's size and MD5."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    md5s, extracted = {}, {}
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = render_digits(n, seed)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            write_idx(folder / name, array)
            data = (folder / name).read_bytes()
            extracted[name] = (len(data), hashlib.md5(data).hexdigest())
            (folder / name).unlink()
            (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            md5s[f"{name}.gz"] = hashlib.md5((folder / f"{name}.gz").read_bytes()).hexdigest()
    return md5s, extracted


def draw(text: str = "3", size: int = 200, ink: int = 0, paper: int = 255) -> Image.Image:
    """A digit in Pillow's font, dark ink on light paper by default, as mode "L"."""
    image = Image.new("L", (size, size), paper)
    font = ImageFont.load_default(size=int(size * 0.75))
    ImageDraw.Draw(image).text((size / 2, size / 2), text, fill=ink, font=font, anchor="mm")
    return image


def mnist_convention(ink: np.ndarray) -> np.ndarray:
    """MNIST's convention, done here independently of the code under test: the box of the ink
    (white on black) scaled to 20 pixels on its longer side, pasted with its centre of mass at (14, 14)."""
    ys, xs = np.nonzero(ink)
    box = Image.fromarray(ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    scale = 20 / max(box.size)
    small = box.resize((max(1, round(box.width * scale)), max(1, round(box.height * scale))), Image.Resampling.LANCZOS)
    digit = np.asarray(small, np.float64) * 255 / max(1, np.asarray(small).max())
    cy, cx = (float((digit.sum(axis=a) * np.arange(digit.shape[1 - a])).sum() / digit.sum()) for a in (1, 0))
    top, left = min(max(round(14 - cy), 0), 28 - digit.shape[0]), min(max(round(14 - cx), 0), 28 - digit.shape[1])
    field = np.zeros((28, 28))
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.round(field).astype(np.uint8)


def transparent(image: Image.Image, mode: str) -> Image.Image:
    """The digit opaque black on a fully transparent background whose colour is black too: read
    without its alpha, the file is all black, so only compositing on white shows the digit."""
    alpha = Image.eval(image, lambda v: 255 - v)
    black = Image.new("L", image.size, 0)
    if mode == "LA":
        return Image.merge("LA", (black, alpha))
    return Image.merge("RGBA", (black, black, black, alpha))


FIT = [
    "fit",
    "--data.val_size=200",
    "--data.batch_size=100",
    "--trainer.max_epochs=3",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=false",
]


@contextmanager
def torch_on_one_thread():
    """One torch thread inside the block: the tests' tiny models gain nothing from more, and lose 20x
    when another process is busy. The count is given back after it, since later tests' results
    depend on it (float sums over other thread counts differ in their last bits: test_reliability)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(data_dir: Path, folder: Path, *extra: str) -> Path:
    """Fit the default CNN on `data_dir` inside `folder` with the real CLI; returns its best checkpoint."""
    from digits_lightning.cli import main

    with torch_on_one_thread(), pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        main([*FIT, f"--data.data_dir={data_dir}", *extra])
    (best,) = (folder / "checkpoints" / "cnn").glob("epoch=*.ckpt")
    return best
