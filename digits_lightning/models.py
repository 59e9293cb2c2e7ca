"""The two reference networks as LightningModules: a dense 784-128-10 net and a small CNN.

Both train with Adam on cross-entropy over logits (softmax only where probabilities are
reported), optionally under a one-cycle learning-rate schedule, and track torchmetrics accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from digits_lightning.checkpoints import check_schedule_fits, check_weights_fit


class DigitClassifier(LightningModule):
    """What both networks share: the steps, the metrics and the optimiser. Subclasses set `self.net`."""

    name = "digits"  # folder name for checkpoints and logs

    def __init__(
        self,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        one_cycle: bool = True,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"model.lr must be positive, got {lr}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"model.betas must be two numbers in [0, 1), got {list(betas)}")
        if weight_decay < 0:
            raise ValueError(f"model.weight_decay must not be negative, got {weight_decay}")
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"model.label_smoothing must be in [0, 1], got {label_smoothing}")
        # Per-stage running metrics, updated every step and logged once per epoch: `self.log` in
        # every step costs more than a whole step of these tiny networks.
        self.metrics = nn.ModuleDict()
        for stage in ("train", "val", "test"):
            self.metrics[f"{stage}_loss"] = MeanMetric(nan_strategy="disable")
            self.metrics[f"{stage}_acc"] = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
        self._compiled = None

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and self._compiled is None:
            # Kept outside the module tree (no `_orig_mod.` keys), so checkpoints stay loadable.
            object.__setattr__(self, "_compiled", torch.compile(self.net))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images `[N, 1, 28, 28]` -> logits `[N, 10]`."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self.net if self._compiled is None else self._compiled)(x)

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        self.metrics[f"{stage}_loss"].update(loss.detach(), len(y))
        self.metrics[f"{stage}_acc"].update(logits.detach(), y)
        return loss, logits

    def _log_epoch(self, stage: str) -> None:
        """Log `<stage>_loss` and `<stage>_acc` (synchronised across processes) and start afresh."""
        for name in (f"{stage}_loss", f"{stage}_acc"):
            self.log(name, self.metrics[name].compute(), prog_bar=name == "val_acc")
            self.metrics[name].reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Returns the logits, for the confusion matrix and the mistakes (`callbacks.TestPictures`)."""
        return self._step(batch, "test")[1]

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Class probabilities for a batch of user images (see `prediction.ImageFiles`), with the files'
        paths and errors, so that `trainer.predict` results say which file each row belongs to."""
        probs = self(batch["image"]).softmax(dim=1)
        return {"path": batch["path"], "error": batch["error"], "probs": probs}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse the weights of another network or version with one clear error, before loading them."""
        path = getattr(self._trainer, "ckpt_path", None)
        check_weights_fit(self, checkpoint, path)
        if self._trainer is not None and self.trainer.state.fn == "fit" and self.hparams.one_cycle:
            check_schedule_fits(checkpoint, self.trainer.estimated_stepping_batches, path)

    def configure_optimizers(self):
        hp = self.hparams
        # Fused: one kernel for all parameters instead of ~10 operations each (60 us less per dense
        # step and 240 us per CNN step on a 2-core CPU).
        optimizer = torch.optim.Adam(
            self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )  # fmt: skip
        if not hp.one_cycle:
            return optimizer
        steps = self.trainer.estimated_stepping_batches
        if steps == float("inf"):
            raise ValueError(
                "the one-cycle schedule needs to know how long training runs: with --trainer.max_epochs -1,"
                " set --trainer.max_steps, or turn the schedule off with --model.one_cycle false"
            )
        # A quarter of the steps warm up; not where that is exactly one step (a 4-step run), on which
        # OneCycleLR divides by zero.
        warm_up = 0.25 if steps * 0.25 != 1 else 0.5
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp.lr, total_steps=steps, pct_start=warm_up)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class DenseClassifier(DigitClassifier):
    """The dense reference: Flatten -> Linear(784, hidden) -> ReLU -> Linear(hidden, 10)."""

    name = "dense"

    def __init__(
        self,
        hidden: int = 128,
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        one_cycle: bool = True,
        label_smoothing: float = 0.1,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(lr, betas, weight_decay, one_cycle, label_smoothing, channels_last, compile)
        if hidden < 1:
            raise ValueError(f"model.hidden must be at least 1, got {hidden}")
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, 10))


class CNNClassifier(DigitClassifier):
    """Two conv + pool blocks -> flatten -> dense -> 10 classes (`batch_norm` for the stronger config)."""

    name = "cnn"

    def __init__(
        self,
        channels: tuple[int, int] = (24, 32),
        hidden: int = 256,
        dropout: float = 0.0,
        batch_norm: bool = False,
        lr: float = 0.01,
        betas: tuple[float, float] = (0.7, 0.9),
        weight_decay: float = 0.0,
        one_cycle: bool = True,
        label_smoothing: float = 0.1,
        channels_last: bool = True,  # NHWC: what oneDNN's fast CPU kernels (2x in bf16) and tensor cores want
        compile: bool = False,
    ) -> None:
        super().__init__(lr, betas, weight_decay, one_cycle, label_smoothing, channels_last, compile)
        if len(channels) != 2 or min(channels) < 1 or hidden < 1:
            raise ValueError(f"model.channels must be two counts and model.hidden one, each at least 1, got {list(channels)} and {hidden}")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        self.save_hyperparameters()
        c1, c2 = channels

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batch_norm else nn.Identity()

        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 5, bias=not batch_norm), norm(c1), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 24 -> 12
            nn.Conv2d(c1, c2, 3, bias=not batch_norm), norm(c2), nn.ReLU(), nn.MaxPool2d(2),  # 12 -> 10 -> 5
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c2 * 5 * 5, hidden), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )  # fmt: skip
