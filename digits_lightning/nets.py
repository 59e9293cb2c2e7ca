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

        # Pooled before the ReLU: the same function (max and ReLU commute) and the same gradients,
        # with the ReLU and its backward on a quarter of the values: the float32 fit on a CPU is
        # markedly faster (benchmarks/vs_keras.py). The layers keep their indices, so weights load.
        super().__init__(
            nn.Conv2d(1, c1, 5, bias=not batch_norm), norm(c1), nn.MaxPool2d(2), nn.ReLU(),  # 28 -> 24 -> 12
            nn.Conv2d(c1, c2, 3, bias=not batch_norm), norm(c2), nn.MaxPool2d(2), nn.ReLU(),  # 12 -> 10 -> 5
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c2 * 5 * 5, hidden), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )  # fmt: skip


class ResidualBlock(nn.Module):
    """Two 3x3 conv + batch norm layers with an identity shortcut (a 1x1 projection where the
    width or the resolution changes): `relu(x' + f(x))`."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )  # fmt: skip
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.shortcut(x) + self.body(x))


class ResNet(nn.Sequential):
    """A compact residual CNN: a 3x3 stem, stages of residual blocks (each stage after the first
    halves the resolution and widens), global average pooling, one linear layer.

    `stem_pool` max-pools the stem's 28x28 maps to 14x14 before the first stage (4x fewer
    operations in the stages, which a 2-core CPU needs). With the defaults: stem 28x28 (32) ->
    pool -> 14x14 (32) -> 7x7 (64) -> 4x4 (128), one block per stage.
    """

    def __init__(
        self, channels: tuple[int, ...] = (32, 64, 128), blocks: tuple[int, ...] = (1, 1, 1), classes: int = 10,
        dropout: float = 0.0, stem_pool: bool = True,
    ) -> None:  # fmt: skip
        layers: list[nn.Module] = [nn.Conv2d(1, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0])]
        if stem_pool:  # before the ReLU, as in ConvNet: the same function, a quarter of the ReLU's work
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.ReLU(inplace=True))
        c_in = channels[0]
        for stage, (c, n) in enumerate(zip(channels, blocks)):
            for i in range(n):
                layers.append(ResidualBlock(c_in, c, 2 if stage > 0 and i == 0 else 1))
                c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, classes)]
        super().__init__(*layers)
