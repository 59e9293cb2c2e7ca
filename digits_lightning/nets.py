"""The plain networks, usable without Lightning: `nn.Module`s from a 28x28 image to class logits.

They take images already normalised; the LightningModules in `models.py` wrap them with the
normalisation, the loss, the metrics and the optimiser.
"""

from __future__ import annotations

from torch import nn


class DenseNet(nn.Sequential):
    """The dense reference: Flatten -> Linear(784, hidden) -> ReLU -> Linear(hidden, classes)."""

    def __init__(self, hidden: int = 128, classes: int = 10) -> None:
        super().__init__(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class ConvNet(nn.Sequential):
    """The CNN reference: two conv + pool blocks -> flatten -> dense -> classes.

    `batch_norm` and `dropout` make the stronger variant of `configs/cnn_best.yaml`.
    """

    def __init__(
        self, channels: tuple[int, int] = (24, 32), hidden: int = 256, classes: int = 10,
        batch_norm: bool = False, dropout: float = 0.0,
    ) -> None:  # fmt: skip
        c1, c2 = channels

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batch_norm else nn.Identity()

        super().__init__(
            nn.Conv2d(1, c1, 5, bias=not batch_norm), norm(c1), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 24 -> 12
            nn.Conv2d(c1, c2, 3, bias=not batch_norm), norm(c2), nn.ReLU(), nn.MaxPool2d(2),  # 12 -> 10 -> 5
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c2 * 5 * 5, hidden), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )  # fmt: skip
