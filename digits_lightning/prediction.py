"""`predict` inside Lightning: the user's files as a Dataset decoded in workers, the writer callback,
and the CPU threads left to the model while workers decode.

`ImageFiles` decodes each file (`preprocess.preprocess_file`) in DataLoader workers; a file that
cannot become an image yields a black one and its error instead of stopping the batch.
`PredictionWriter` hands each batch's probabilities to `results.Results`.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from digits_lightning.conventions import read as read_for_convention
from digits_lightning.cpus import usable_cpus
from digits_lightning.image_files import PredictionError, find_images
from digits_lightning.preprocess import FIELD
from digits_lightning.results import Results


class ImageFiles(Dataset):
    """One item per file: `{"path", "image": uint8 [28, 28], "error": ""}`; a failed file has an error
    (`kind: message`) and a black image."""

    def __init__(self, spec: str, convention: str = "mnist") -> None:
        self.convention = convention  # how the model's training set places its glyphs (conventions.py)
        paths, self.hidden = find_images(spec)
        # One numpy array rather than a list of str: workers forked from this process then share it
        # instead of copying every string they touch (reference counts write to the pages).
        self.paths = np.array(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = str(self.paths[index])
        image, error = read_for_convention(path, self.convention)
        if image is None:
            image = np.zeros((FIELD, FIELD), np.uint8)
        return {"path": path, "image": torch.from_numpy(image), "error": error}

    def loader(self, batch_size: int, workers: int) -> DataLoader:
        """Decoding in up to `workers` processes, no more than there are batches; none for one batch,
        which the main process decodes as fast, without starting a worker."""
        batches = math.ceil(len(self) / batch_size)
        workers = min(workers, batches) if batches > 1 else 0
        return DataLoader(self, batch_size=batch_size, num_workers=workers)  # workers run torch on 1 thread


class PredictionWriter(BasePredictionWriter):
    """Writes what `predict` found (see `results.Results` for the files and the options)."""

    def __init__(
        self, output: str | None = None, jsonl: bool = False, sheet: bool = False, sheet_count: int = 48,
        overwrite: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(write_interval="batch")
        self.results = Results(output, jsonl, sheet, sheet_count, overwrite)
        self.active = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        if trainer.world_size > 1:  # on every process, so none waits for the others
            raise PredictionError("predict runs on one device: pass --trainer.devices 1")
        self.results.open(pl_module.hparams.get("class_names") or [str(i) for i in range(10)])
        self.active = True

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        probs = prediction["probs"].cpu().numpy()
        images = batch["image"][:, 0].float().cpu().numpy() if self.results.sheet else None
        for i, (path, error) in enumerate(zip(prediction["path"], prediction["error"])):
            self.results.add(path, probs[i], error, images[i] if images is not None else None)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.active:
            self.active = False
            hidden = getattr(getattr(trainer.datamodule, "predict_set", None), "hidden", 0)
            self.results.close(time.perf_counter() - self._start, hidden)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.active = False
        self.results.abort(exception)


class PredictThreads(Callback):
    """Leaves the model the CPUs the decoding workers do not use, for the length of `predict` only.

    The workers decode on the cores the model runs on: a model that spreads each operation over
    every core then waits for a busy one at every step (10-30x slower).
    """

    def __init__(self) -> None:
        self._threads: int | None = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loaders = trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        workers = max((getattr(loader, "num_workers", 0) for loader in loaders), default=0)
        if workers and trainer.strategy.root_device.type == "cpu":
            self._threads = torch.get_num_threads()
            torch.set_num_threads(max(1, usable_cpus() - workers))

    def _restore(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()
