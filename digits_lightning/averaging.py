"""An exponential moving average of the weights (Lightning's `WeightAveraging`), safe on short runs.

Lightning's `EMAWeightAveraging` averages with a fixed decay from the first step's weights: with
0.998, a 5-epoch run of the ResNet (1,075 steps) still gives 12% of the average to the untrained
weights, and a few steps on a small data set give it nearly all. Here the decay grows with the
steps averaged, `min(decay, (1 + n) / (10 + n))`, as TensorFlow's `ExponentialMovingAverage`
does with `num_updates`: the average covers about the last tenth of the steps taken, up to the
fixed decay's horizon.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging

from digits_lightning.errors import SettingError


class EMA(WeightAveraging):
    """Validation, checkpoints and the end of `fit` use the averaged weights (the checkpoint's
    `state_dict`); the raw ones are kept beside them for resuming.

    Args:
        decay: The largest decay: the average's horizon is about `1 / (1 - decay)` steps.
    """

    def __init__(self, decay: float = 0.998) -> None:
        if not 0 < decay < 1:
            raise SettingError(f"EMA's decay must be between 0 and 1, got {decay}")
        self.decay = decay
        super().__init__(avg_fn=self._average)

    def _average(self, averaged: torch.Tensor, current: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        decay = torch.clamp((1 + steps) / (10 + steps), max=self.decay).to(averaged.dtype)
        return averaged + (current - averaged) * (1 - decay)
