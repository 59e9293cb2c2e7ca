"""The symbol sets a model can learn, and what each one's images mean: class names, pixel statistics,
and how a glyph sits in its 28x28 field (the convention user images are brought to).

A model saves these with its weights (`models.DigitClassifier`), so a checkpoint or an exported file
knows what it reads without the data module. `--data.dataset` chooses one (`data.MNISTDataModule`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from torchvision.datasets import EMNIST, KMNIST, MNIST, FashionMNIST


@dataclass(frozen=True)
class SymbolSet:
    torchvision_class: type  # reads the official archives, with their checksums and folder layout
    class_names: tuple[str, ...]
    stats: tuple[float, float]  # mean and standard deviation of the training pixels in [0, 1]
    title: str = "MNIST"  # for messages
    convention: str = "mnist"  # how glyphs sit in the field: `conventions.CONVENTIONS`
    split: str | None = None  # EMNIST's split
    transposed: bool = False  # stored with rows and columns swapped (EMNIST): transposed back on loading
    label_offset: int = 0  # stored labels minus this are the class indices (EMNIST letters: 1-26)
    fix: str = ""  # where to get the archives, for the message when they are missing


DIGITS = tuple("0123456789")
LETTERS = tuple(string.ascii_lowercase)
_EMNIST_FIX = (
    "download gzip.zip (about 540 MB) from https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip, or the"
    " page that now links it (it has moved: see the EMNIST page of Western Sydney University), and point"
    " --data.data_dir at the folder that holds it"
)
SYMBOL_SETS = {
    "mnist": SymbolSet(
        MNIST, DIGITS, (0.1307, 0.3081),
        fix="e.g. --data.data_dir ../shared/datasets/mnist",
    ),
    # Fashion-MNIST's statistics are its training images' (tests/test_datasets.py checks them on
    # Debian's archives); the EMNIST and KMNIST ones are the values commonly published for them (their
    # archives are not here to measure; the networks' batch norm makes small errors harmless).
    "fashion": SymbolSet(
        FashionMNIST, tuple(FashionMNIST.classes), (0.2860, 0.3530), "Fashion-MNIST", convention="fashion",
        fix="e.g. apt-get install dataset-fashion-mnist, then --data.data_dir /usr/share/datasets/fashion-mnist",
    ),
    "kmnist": SymbolSet(
        KMNIST, tuple(KMNIST.classes), (0.1918, 0.3483), "KMNIST",
        fix="download them from https://github.com/rois-codh/kmnist and point --data.data_dir at their folder",
    ),
    "emnist-digits": SymbolSet(
        EMNIST, DIGITS, (0.1733, 0.3317), "EMNIST digits", "emnist", "digits", transposed=True, fix=_EMNIST_FIX
    ),
    "emnist-letters": SymbolSet(
        EMNIST, LETTERS, (0.1722, 0.3309), "EMNIST letters", "emnist", "letters", transposed=True,
        label_offset=1, fix=_EMNIST_FIX,
    ),
    "emnist-balanced": SymbolSet(
        EMNIST, tuple(EMNIST.classes_split_dict["balanced"]), (0.1751, 0.3332), "EMNIST balanced", "emnist",
        "balanced", transposed=True, fix=_EMNIST_FIX,
    ),
}  # fmt: skip
DATASETS = tuple(SYMBOL_SETS)
