"""Callbacks that tell the user what happened: training time, test accuracy, where files went."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix

from digits_lightning import plots


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


# -- pictures and the HPARAMS tab ------------------------------------------------------------------


class _Pictures(Callback):
    """Figures become `<name>.png` in the run's log folder and, with TensorBoard, the image `<name>`;
    where each went is printed when the stage ends. Nothing happens without a logger or in fast_dev_run."""

    def __init__(self) -> None:
        self.written: list[tuple[str, Path]] = []

    @staticmethod
    def _active(trainer: Trainer) -> bool:
        return trainer.logger is not None and trainer.log_dir is not None and not trainer.fast_dev_run

    def _publish(self, trainer: Trainer, name: str, label: str, fig: Figure, step: int) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask, not only the first
        if not trainer.is_global_zero:
            return
        rgb = plots.render(fig)
        png = plots.encode_png(rgb)
        self.written.append((label, plots.write_png(png, Path(log_dir) / f"{name}.png")))
        if isinstance(trainer.logger, TensorBoardLogger):
            _log_png(trainer.logger.experiment, name, rgb, png, step)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for label, path in self.written:
            _say(f"{label + ':':18}{path}")
        self.written.clear()


def _log_png(writer, tag: str, rgb: np.ndarray, png: bytes, step: int) -> None:
    """The picture into TensorBoard as the PNG already encoded for its file: `add_image` would
    encode the pixels a second time (0.03-0.09 s a picture, a tenth of the time around training)."""
    file_writer = getattr(writer, "file_writer", None)  # torch's SummaryWriter; None once closed
    if file_writer is None:
        writer.add_image(tag, rgb, step, dataformats="HWC")
        return
    from tensorboard.compat.proto.summary_pb2 import Summary  # loaded with the writer already

    height, width, channels = rgb.shape
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
    file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


class TrainingPictures(_Pictures):
    """`samples`: a grid of training images with their labels, when fit starts.
    `learning_curves`: accuracy and loss per epoch, training against validation, when fit ends."""

    def __init__(self, samples: int = 32) -> None:
        super().__init__()
        self.samples = samples
        self.history: list[dict[str, float]] = []  # one entry per epoch, from what the model logged
        self._val: dict[str, float] = {}
        self._ended: int | None = None  # the epoch whose record waits for its training metrics

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.history, self._val, self._ended = [], {}, None
        if self._active(trainer) and hasattr(trainer.datamodule, "training_samples"):
            images, labels = trainer.datamodule.training_samples(self.samples)
            names = _class_names(pl_module)
            augmented = getattr(trainer.datamodule, "augment", None) is not None
            fig = plots.sample_grid(images.numpy(), [names[int(y)] for y in labels], augmented=augmented)
            self._publish(trainer, "samples", "Training samples", fig, step=0)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._val = _metrics(trainer, "val_acc", "val_loss")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._ended = trainer.current_epoch + 1  # from 1, and right after resuming from a checkpoint

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer)

    def _record(self, trainer: Trainer) -> None:
        """Take the epoch that just ended into the history. The module logs its training metrics in its
        own `on_train_epoch_end`, which Lightning calls after the callbacks', so this waits for the next
        epoch's start (or the end of training). Validation ran inside the epoch: `_val` is its own."""
        if self._ended is not None:
            self.history.append({"epoch": self._ended, **_metrics(trainer, "train_acc", "train_loss"), **self._val})
        self._ended, self._val = None, {}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.history and self._active(trainer):
            title = f"Learning curves of {type(pl_module).__name__}"
            fig = plots.learning_curves(self.history, title)
            self._publish(trainer, "learning_curves", "Learning curves", fig, trainer.global_step)


class TestPictures(_Pictures):
    """After test: `confusion_matrix` and `misclassified` (the most confident mistakes).

    Needs `test_step` to return the logits. With several processes the matrix covers every test
    image, the mistakes those of the first process.
    """

    def __init__(self, worst: int = 24) -> None:
        super().__init__()
        self.worst = worst
        self.matrix: MulticlassConfusionMatrix | None = None
        self.mistakes: list[torch.Tensor] = []  # images, true, predicted, confidence; most confident first

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        classes = len(_class_names(pl_module))
        self.matrix = MulticlassConfusionMatrix(num_classes=classes).to(pl_module.device) if self._active(trainer) else None
        self.mistakes = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.matrix is None:
            return
        if not isinstance(outputs, torch.Tensor):
            rank_zero_warn("TestPictures: test_step returned no logits, so there is no confusion matrix.")
            self.matrix = None
            return
        x, y = batch
        self.matrix.update(outputs, y)
        confidence, predicted = outputs.float().softmax(dim=1).max(dim=1)  # bf16 logits under mixed precision
        wrong = predicted != y
        found = [x[wrong], y[wrong], predicted[wrong], confidence[wrong]]
        if self.mistakes:
            found = [torch.cat(pair) for pair in zip(self.mistakes, found)]
        keep = found[3].argsort(descending=True)[: self.worst]
        self.mistakes = [t[keep].detach() for t in found]

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.matrix is None or not self.mistakes:
            return
        counts = self.matrix.compute().cpu().numpy()  # on every process: it gathers their counts
        total, wrong = int(counts.sum()), int(counts.sum() - np.trace(counts))
        step = trainer.global_step
        names = _class_names(pl_module)
        fig = plots.confusion_matrix(counts, "Confusion matrix of the test set", names)
        self._publish(trainer, "confusion_matrix", "Confusion matrix", fig, step)
        images, true, predicted, confidence = (t.cpu().numpy() for t in self.mistakes)
        true, predicted = [names[int(i)] for i in true], [names[int(i)] for i in predicted]
        fig = plots.misclassified_grid(images, true, predicted, confidence, total=total, wrong=wrong)
        self._publish(trainer, "misclassified", "Worst mistakes", fig, step)


class HParams(Callback):
    """Each run's hyperparameters beside its final metrics in TensorBoard's HPARAMS tab.

    The tab shows each metric's latest value, so `fit` declares `hp/val_acc`, `hp/val_loss`,
    `hp/test_acc` and `hp/test_loss` as NaN when it starts (the run is listed while it trains) and
    logs them when known: the best epoch's validation metrics (the checkpoint the test after fit
    uses) when fit ends, the test metrics when test ends. A `test` on its own writes its row then.
    """

    METRICS = ("val_acc", "val_loss", "test_acc", "test_loss")

    def __init__(self) -> None:
        self._declared_in: str | None = None  # the log folder whose hyperparameters are written
        self._best_val: dict[str, float] = {}
        self._logged = False

    @staticmethod
    def _logger(trainer: Trainer) -> TensorBoardLogger | None:
        logger = trainer.logger
        return logger if isinstance(logger, TensorBoardLogger) and not trainer.fast_dev_run else None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._best_val = {}
        logger = self._logger(trainer)
        if logger is not None:
            self._declare(trainer, pl_module, logger, {}, step=0)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            val = _metrics(trainer, "val_acc", "val_loss")
            if val.get("val_acc", -math.inf) > self._best_val.get("val_acc", -math.inf):
                self._best_val = val

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, self._best_val)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, _metrics(trainer, "test_acc", "test_loss"))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = self._logger(trainer)
        if self._logged and logger is not None:
            where = f"{logger.log_dir} (scalars, images, hparams)"
            _say(f"{'TensorBoard:':18}{where}: tensorboard --logdir {logger.save_dir}")
        self._logged = False

    def _log(self, trainer: Trainer, pl_module: LightningModule, metrics: dict[str, float]) -> None:
        logger = self._logger(trainer)
        if logger is None or not metrics:
            return
        metrics = {f"hp/{name}": value for name, value in metrics.items()}
        if self._declared_in == logger.log_dir:
            logger.log_metrics(metrics, step=trainer.global_step)
        else:
            self._declare(trainer, pl_module, logger, metrics, step=trainer.global_step)
        self._logged = True

    def _declare(self, trainer, pl_module, logger: TensorBoardLogger, known: dict[str, float], step: int) -> None:
        metrics = {f"hp/{name}": math.nan for name in self.METRICS} | known
        logger.log_hyperparams(_hyperparameters(trainer, pl_module), metrics, step=step)
        self._declared_in = logger.log_dir


def _hyperparameters(trainer: Trainer, pl_module: LightningModule) -> dict:
    """What tells runs apart: the model class and its settings, the data settings, the epochs."""
    params = {"model": type(pl_module).__name__, **pl_module.hparams}
    # TensorBoard takes the columns from any one run's declaration, so a test declares the same keys.
    params["max_epochs"] = trainer.max_epochs if trainer.state.fn == TrainerFn.FITTING else math.nan
    datamodule = trainer.datamodule
    if datamodule is not None:
        params.update(datamodule.hparams)
        if hasattr(datamodule, "augment"):
            params["augment"] = repr(datamodule.augment) if datamodule.augment else "off"
    # Private keys (`_class_path`) and the predict-only options say nothing about a run's results.
    return {name: value for name, value in params.items() if not name.startswith(("_", "predict_"))}


def _class_names(pl_module: LightningModule) -> list[str]:
    names = pl_module.hparams.get("class_names")
    return [str(name) for name in names] if names else [str(i) for i in range(10)]


def _metrics(trainer: Trainer, *names: str) -> dict[str, float]:
    metrics = trainer.callback_metrics
    return {name: float(metrics[name]) for name in names if name in metrics}


@rank_zero_only
def _say(line: str) -> None:
    print(line, flush=True)
