"""The symbol sets a model can learn, and what each one's images mean: class names and pixel statistics.

A model saves these with its weights (`models.DigitClassifier`), so a checkpoint or an exported file
knows what it reads without the data module.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision.datasets import MNIST


@dataclass(frozen=True)
class SymbolSet:
    torchvision_class: type  # reads the official archives, with their checksums and folder layout
    class_names: tuple[str, ...]
    stats: tuple[float, float]  # mean and standard deviation of the training pixels in [0, 1]


DIGITS = tuple("0123456789")
SYMBOL_SETS = {
    "mnist": SymbolSet(MNIST, DIGITS, (0.1307, 0.3081)),
}
