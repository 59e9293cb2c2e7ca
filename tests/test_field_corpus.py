"""`benchmarks/field_corpus.py`: every family writes real files of the kind it names, the same ones
for the same seed, and the plain recipe it compares against is the MNIST convention."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks.field_corpus import FAMILIES, build, plain_recipe
from digits_lightning.preprocess import preprocess_file
from tests.helpers import draw, mnist_convention, render_digits


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    images, labels = render_digits(3 * len(FAMILIES), seed=5)
    folder = tmp_path_factory.mktemp("corpus")
    return folder, images, labels, build(folder, images, labels, per_family=3, seed=1)


def test_every_family_writes_files_of_its_kind(corpus):
    _, _, labels, files = corpus
    assert set(files) == set(FAMILIES)
    seen = []
    for name, paths in files.items():
        assert len(paths) == 3
        for path in paths:
            with Image.open(path) as image:
                image.load()
                size, mode, kind = image.size, image.mode, image.format
                levels = len(np.unique(np.asarray(image.convert("L"))))
            seen += [int(path.stem.split("_")[1])]
            if name == "JPEG q60-90":
                assert kind == "JPEG"
            if name == "coloured ink (RGB)":
                assert mode == "RGB"
            if name == "faint thin 28x28":
                assert size == (28, 28)
            if name == "stretched 16x16 binary":
                assert size[0] == size[1] and size[0] % 16 == 0 and levels <= 2
            if name.startswith("low-res"):
                side = int(name.split()[1].split("x")[0])
                assert size[0] == size[1] and size[0] % side == 0 and 4 <= size[0] // side <= 12
            preprocess_file(path)  # every file holds a digit that preprocessing finds
    assert sorted(seen) == sorted(labels.tolist())  # each digit used once, its label in the name


def test_the_same_seed_writes_the_same_files(corpus, tmp_path):
    _, images, labels, files = corpus
    again = build(tmp_path, images, labels, per_family=3, seed=1)
    for name in FAMILIES:
        assert [p.read_bytes() for p in again[name]] == [p.read_bytes() for p in files[name]]


@pytest.mark.parametrize("text", ["2", "7"])
def test_plain_recipe_is_the_mnist_convention(tmp_path, text):
    path = tmp_path / "digit.png"
    draw(text).save(path)
    assert np.abs(plain_recipe(path).astype(int) - mnist_convention(255 - np.asarray(draw(text)))).mean() < 6
