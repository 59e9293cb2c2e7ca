"""Callbacks that tell the user what happened: training time, test accuracy, where files went."""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only


class Report(Callback):
    """Prints `Trained 5 epochs in 7.9 s` after fit and `Test accuracy: 99.12%` after test.

    The training time covers the fit loop alone (training and validation epochs), not start-up,
    data loading or the final test, so it compares with the reference systems' training time.
    """

    def __init__(self) -> None:
        self.train_seconds: float | None = None
        self._start = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.train_seconds = time.perf_counter() - self._start
        epochs = trainer.current_epoch
        self._print(f"Trained {epochs} epoch{'s' * (epochs != 1)} in {self.train_seconds:.1f} s")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        acc = trainer.callback_metrics.get("test_acc")
        if acc is not None:
            self._print(f"Test accuracy: {100 * float(acc):.2f}%")

    @rank_zero_only
    def _print(self, line: str) -> None:
        print(line, flush=True)
