"""The LightningModules: a plain network from `nets.py` with what its weights need and how it learns.

The model owns its inputs: `model(x)` takes images scaled to [0, 1], shape `[N, 1, 28, 28]`, white
ink on black, and applies its own normalisation, so a checkpoint loaded anywhere (a script, the
CLI, an exported file, a web server) is fed the same way. Its class names travel with it too.

Both references train with Adam on cross-entropy over logits (softmax only where probabilities
are reported), optionally under a one-cycle learning-rate schedule, and track torchmetrics accuracy.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from digits_lightning.conventions import CONVENTIONS
from digits_lightning.compatibility import check_schedule_fits, check_weights_fit
from digits_lightning.datasets import DIGITS, SYMBOL_SETS
from digits_lightning.errors import SettingError
from digits_lightning import nets
from digits_lightning.nets import ConvNet, DenseNet

MNIST_STATS = SYMBOL_SETS["mnist"].stats
_SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
TTA_VIEWS = {  # (rows down, columns right, mirrored) of each view
    "none": [(0, 0, False)],
    "shifts": [(dy, dx, False) for dy, dx in _SHIFTS],
    "shifts+mirror": [(dy, dx, m) for dy, dx in _SHIFTS for m in (False, True)],
}


def _view(x: torch.Tensor, dy: int, dx: int, mirror: bool) -> torch.Tensor:
    """Images `[N, 1, 28, 28]` mirrored left to right (if asked), then moved by (dy, dx) pixels, the
    border filled with background (0), not wrapped around."""
    if mirror:
        x = x.flip(-1)
    if dy == dx == 0:
        return x
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 - dy : 1 - dy + x.shape[-2], 1 - dx : 1 - dx + x.shape[-1]]


class DigitClassifier(LightningModule):
    """What every network shares: input normalisation, the steps, the metrics and the optimiser.

    Subclasses set `self.net`, a plain `nn.Module` from normalised images to logits.

    Args (shared by the subclasses):
        weight_decay: Decoupled from the gradient, as in AdamW: each step shrinks the weights by
            `lr * weight_decay`, whatever Adam's scaling of the gradient.
        final_lr: Where the one-cycle schedule ends, as a share of `lr` (0: annealed to nearly nil).
            Under a moving average of the weights (`averaging.EMA`), a schedule that stays high
            averages weights that still move, as stochastic weight averaging does.
        normalize: `unit` feeds the network the [0, 1] pixels as they are (the dense reference);
            `standard` subtracts the data set's mean and divides by its standard deviation.
        class_names: One name per class, in label order; set from the data set by the CLI.
        dataset_stats: The training pixels' mean and standard deviation, for `standard`; set from
            the data set by the CLI.
        convention: How the data set places its glyphs in the field (`conventions.CONVENTIONS`), which
            user images are brought to before prediction; set from the data set by the CLI.
        tta: Test-time augmentation in `test` and `predict` (not in validation, which chooses the
            checkpoint): `shifts` averages the probabilities over the image and its four 1-pixel
            shifts, `shifts+mirror` also over their mirror images (for a model trained with
            `--data.flip`). Adopted only where it adds validation accuracy (`benchmarks/tta.py`):
            `configs/fashion.yaml` uses `shifts+mirror`; on MNIST it adds none.
    """

    name = "digits"  # folder name for checkpoints and logs

    def __init__(
        self,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        one_cycle: bool = True,
        final_lr: float = 0.0,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        normalize: Literal["unit", "standard"] = "standard",
        class_names: tuple[str, ...] = DIGITS,
        dataset_stats: tuple[float, float] = MNIST_STATS,
        convention: str = "mnist",
        tta: Literal["none", "shifts", "shifts+mirror"] = "none",
    ) -> None:
        super().__init__()
        if tta not in TTA_VIEWS:
            raise SettingError(f"model.tta must be one of {', '.join(TTA_VIEWS)}, got {tta!r}")
        if convention not in CONVENTIONS:
            raise SettingError(f"model.convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
        if lr <= 0:
            raise SettingError(f"model.lr must be positive, got {lr}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise SettingError(f"model.betas must be two numbers in [0, 1), got {list(betas)}")
        if weight_decay < 0:
            raise SettingError(f"model.weight_decay must not be negative, got {weight_decay}")
        if not 0 <= final_lr <= 1:
            raise SettingError(f"model.final_lr is a share of model.lr: in [0, 1], got {final_lr}")
        if not 0 <= label_smoothing <= 1:
            raise SettingError(f"model.label_smoothing must be in [0, 1], got {label_smoothing}")
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise SettingError(f"model.class_names must be at least two different names, got {list(class_names)}")
        if dataset_stats[1] <= 0:
            raise SettingError(f"model.dataset_stats must be a mean and a positive deviation, got {list(dataset_stats)}")
        self.example_input_array = torch.zeros(2, 1, 28, 28)  # the model summary's sizes and FLOPs
        # Per-stage running metrics, updated every step and logged once per epoch: `self.log` in
        # every step costs more than a whole step of these tiny networks.
        self.metrics = nn.ModuleDict()
        for stage in ("train", "val", "test"):
            self.metrics[f"{stage}_loss"] = MeanMetric(nan_strategy="disable")
            self.metrics[f"{stage}_acc"] = MulticlassAccuracy(len(class_names), average="micro", validate_args=False)
        self._compiled = None
        self._set_normalisation(normalize, dataset_stats)

    @property
    def num_classes(self) -> int:
        return len(self.hparams.class_names)

    def _set_normalisation(self, normalize: str, stats) -> None:
        self._mean, self._std = (float(stats[0]), float(stats[1])) if normalize == "standard" else (0.0, 1.0)

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and stage == "fit" and self._compiled is None:
            # Kept outside the module tree (no `_orig_mod.` keys), so checkpoints stay loadable.
            # For training only: a `predict`, `test` or `validate` of the checkpoint later would
            # spend seconds compiling (minutes on a cold cache) to classify a few images.
            object.__setattr__(self, "_compiled", torch.compile(self.net))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images `[N, 1, 28, 28]` in [0, 1] (white ink on black) -> logits `[N, classes]`."""
        if self._mean or self._std != 1:
            x = (x - self._mean) / self._std
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self.net if self._compiled is None else self._compiled)(x)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for `test` and `predict`: the model's own, or under `tta` the log of the
        probabilities averaged over the views (a softmax of it gives those probabilities back)."""
        views = TTA_VIEWS[self.hparams.get("tta", "none")]
        if len(views) == 1:
            return self(x)
        probs = sum(self(_view(x, dy, dx, mirror)).float().softmax(dim=1) for dy, dx, mirror in views) / len(views)
        return probs.clamp_min(1e-12).log()

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.evaluate(x) if stage == "test" else self(x)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        self.metrics[f"{stage}_loss"].update(loss.detach(), len(y))
        self.metrics[f"{stage}_acc"].update(logits.detach(), y)
        return loss, logits

    def _log_epoch(self, stage: str) -> None:
        """Log `<stage>_loss` and `<stage>_acc` (torchmetrics gathers every process's counts) and start afresh."""
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
        probs = self.evaluate(batch["image"]).float().softmax(dim=1)
        return {"path": batch["path"], "error": batch["error"], "probs": probs}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse the weights of another network with one clear error, before loading them; read the
        normalisation of checkpoints written before the model carried it (the data module held it)."""
        hparams = checkpoint.get("hyper_parameters") or {}
        if "normalize" not in hparams:
            saved = (checkpoint.get("datamodule_hyper_parameters") or {}).get("normalize", "standard")
            self.hparams.normalize = saved
            self._set_normalisation(saved, self.hparams.dataset_stats)
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
            decoupled_weight_decay=True, fused=self.device.type in ("cpu", "cuda"),
        )  # fmt: skip
        if not hp.one_cycle:
            return optimizer
        steps = self.trainer.estimated_stepping_batches
        if steps == float("inf"):
            raise SettingError(
                "the one-cycle schedule needs to know how long training runs: with --trainer.max_epochs -1,"
                " set --trainer.max_steps, or turn the schedule off with --model.one_cycle false"
            )
        # A quarter of the steps warm up; not where that is exactly one step (a 4-step run), on which
        # OneCycleLR divides by zero.
        warm_up = 0.25 if steps * 0.25 != 1 else 0.5
        # OneCycleLR starts at lr / 25 and ends at that over `final_div_factor`.
        end = {"final_div_factor": 1 / (25 * hp.final_lr)} if hp.get("final_lr") else {}
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp.lr, total_steps=steps, pct_start=warm_up, **end)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class DenseClassifier(DigitClassifier):
    """The dense reference (`nets.DenseNet`), fed the [0, 1] pixels as they are by default."""

    name = "dense"

    def __init__(
        self,
        hidden: int = 128,
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        one_cycle: bool = True,
        final_lr: float = 0.0,
        label_smoothing: float = 0.1,
        channels_last: bool = False,
        compile: bool = False,
        normalize: Literal["unit", "standard"] = "unit",
        class_names: tuple[str, ...] = DIGITS,
        dataset_stats: tuple[float, float] = MNIST_STATS,
        convention: str = "mnist",
        tta: Literal["none", "shifts", "shifts+mirror"] = "none",
    ) -> None:
        super().__init__(
            lr, betas, weight_decay, one_cycle, final_lr, label_smoothing, channels_last, compile, normalize,
            class_names, dataset_stats, convention, tta,
        )  # fmt: skip
        if hidden < 1:
            raise SettingError(f"model.hidden must be at least 1, got {hidden}")
        self.save_hyperparameters()
        self.net = DenseNet(hidden, len(class_names))


class CNNClassifier(DigitClassifier):
    """The CNN reference (`nets.ConvNet`); `batch_norm` and `dropout` for the stronger config."""

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
        final_lr: float = 0.0,
        label_smoothing: float = 0.1,
        channels_last: bool = True,  # NHWC: what oneDNN's fast CPU kernels (2x in bf16) and tensor cores want
        compile: bool = False,
        normalize: Literal["unit", "standard"] = "standard",
        class_names: tuple[str, ...] = DIGITS,
        dataset_stats: tuple[float, float] = MNIST_STATS,
        convention: str = "mnist",
        tta: Literal["none", "shifts", "shifts+mirror"] = "none",
    ) -> None:
        super().__init__(
            lr, betas, weight_decay, one_cycle, final_lr, label_smoothing, channels_last, compile, normalize,
            class_names, dataset_stats, convention, tta,
        )  # fmt: skip
        if len(channels) != 2 or min(channels) < 1 or hidden < 1:
            raise SettingError(
                f"model.channels must be two counts and model.hidden one, each at least 1, got {list(channels)} and {hidden}"
            )
        if not 0 <= dropout < 1:
            raise SettingError(f"model.dropout must be in [0, 1), got {dropout}")
        self.save_hyperparameters()
        self.net = ConvNet(tuple(channels), hidden, len(class_names), batch_norm, dropout)


class ResNetClassifier(DigitClassifier):
    """A compact residual CNN (`nets.ResNet`): batch norm, a residual block or more per stage, global
    average pooling. `channels` and `blocks` give each stage's width and number of blocks."""

    name = "resnet"

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 128),
        blocks: tuple[int, ...] = (1, 1, 1),
        stem_pool: bool = True,
        dropout: float = 0.0,
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        one_cycle: bool = True,
        final_lr: float = 0.0,
        label_smoothing: float = 0.1,
        channels_last: bool = True,
        compile: bool = False,
        normalize: Literal["unit", "standard"] = "standard",
        class_names: tuple[str, ...] = DIGITS,
        dataset_stats: tuple[float, float] = MNIST_STATS,
        convention: str = "mnist",
        tta: Literal["none", "shifts", "shifts+mirror"] = "none",
    ) -> None:
        super().__init__(
            lr, betas, weight_decay, one_cycle, final_lr, label_smoothing, channels_last, compile, normalize,
            class_names, dataset_stats, convention, tta,
        )  # fmt: skip
        if not channels or len(blocks) != len(channels) or min(channels) < 1 or min(blocks) < 0 or sum(blocks) < 1:
            raise SettingError(
                "model.channels and model.blocks must give each stage a width (at least 1) and a number of blocks"
                f" (at least 0, one block in all), got {list(channels)} and {list(blocks)}"
            )
        if not 0 <= dropout < 1:
            raise SettingError(f"model.dropout must be in [0, 1), got {dropout}")
        self.save_hyperparameters()
        self.net = nets.ResNet(tuple(channels), tuple(blocks), len(class_names), dropout, stem_pool)
