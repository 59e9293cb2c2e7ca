"""Prediction on people's own images: which files, decoding them in workers, writing the results.

`ImageFiles` turns `--data.predict_path` (a file, a folder searched recursively, or a glob) into a
stable, sorted list and decodes each file in DataLoader workers (`preprocess.preprocess_file`); a
file that cannot become a digit yields a blank image and its error instead of stopping the batch.
`PredictionWriter` streams one CSV row (and optionally one JSON line) per file as batches finish,
so memory stays flat for any number of files, and renames the outputs into place only at the end.
"""

from __future__ import annotations

import csv
import glob
import itertools
import json
import math
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from digits_lightning.atomic_write import open_atomically
from digits_lightning.preprocess import DEEP_MODES, FIELD, ImageError, grayscale, load_image, preprocess_file

COLUMNS = ["path", "digit", "confidence", *(f"p{d}" for d in range(10)), "error"]


class PredictionError(RuntimeError):
    """Prediction cannot start; the message says what to do."""


class NothingPredicted(PredictionError):
    """Every file failed: the run is over, and its exit status must say so."""


def find_images(spec: str) -> tuple[list[str], int]:
    """The files `spec` names, sorted, and how many hidden files (`.name`) a folder search passed over.

    Every other file of a folder is kept, whatever its extension: one that is not an image gets
    a row with its error rather than vanishing from the results.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return [str(path)], 0
    if path.is_dir():
        files, hidden = [], 0
        for f in sorted(path.rglob("*")):
            if not f.is_file():
                continue
            if any(part.startswith(".") for part in f.relative_to(path).parts):
                hidden += 1
            else:
                files.append(str(f))
        if not files:
            raise PredictionError(f"{spec}: the folder holds no files{f' (only {hidden} hidden ones)' if hidden else ''}")
        return files, hidden
    if glob.has_magic(spec):
        files = sorted(f for f in glob.glob(str(path), recursive=True) if Path(f).is_file())
        if not files:
            raise PredictionError(f"{spec}: the pattern matches no files. Check it, or quote it so the shell leaves it alone")
        return files, 0
    raise PredictionError(f"{spec}: no such file or folder. Pass an image, a folder of images or a glob to --data.predict_path")


class ImageFiles(Dataset):
    """One item per file: `{"path", "image": uint8 [28, 28], "error": ""}`; a failed file has an error
    (`kind: message`) and a black image."""

    def __init__(self, spec: str) -> None:
        paths, self.hidden = find_images(spec)
        # One numpy array rather than a list of str: workers forked from this process then share it
        # instead of copying every string they touch (reference counts write to the pages).
        self.paths = np.array(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = str(self.paths[index])
        try:
            image, error = preprocess_file(path), ""
        except ImageError as err:
            image, error = None, f"{err.kind}: {err}"
        except Exception as err:  # never let one file stop the batch; the row says what happened
            image, error = None, f"failed: {type(err).__name__}: {err}"
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
    """Writes what `predict` found: a CSV row per file (path, digit, confidence, the ten probabilities,
    error), optionally JSON Lines and a contact sheet, and prints a summary with the files' paths.

    Args:
        output: The CSV file. By default `predictions.csv` in the current folder, or
            `predictions-2.csv`, ... if that is taken (with its `.jsonl` or `.png`).
        jsonl: Also write the rows as JSON Lines, beside the CSV with the suffix `.jsonl`.
        sheet: Also draw a contact sheet (beside the CSV, suffix `.png`): each image as given, as the
            model saw it (28x28), the digit and the confidence.
        sheet_count: How many images the contact sheet shows (the first in the CSV's order).
        overwrite: Replace existing outputs. Without it, a named output that exists is an error.
    """

    def __init__(
        self, output: str | None = None, jsonl: bool = False, sheet: bool = False, sheet_count: int = 48,
        overwrite: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(write_interval="batch")
        if sheet_count < 1:
            raise ValueError(f"prediction.sheet_count must be at least 1, got {sheet_count}")
        self.output, self.jsonl, self.sheet, self.sheet_count, self.overwrite = output, jsonl, sheet, sheet_count, overwrite
        self.paths: dict[str, Path] = {}
        self.errors: Counter[str] = Counter()
        self.total = self.predicted = 0
        self.seconds = 0.0
        self._stack: ExitStack | None = None
        self._sheet_rows: list[tuple[str, np.ndarray, int | None, float, str]] = []

    def outputs(self) -> dict[str, Path]:
        """The files this run will write, by kind ("csv", "jsonl", "sheet"), checked against existing ones."""
        suffixes = {"csv": ".csv"} | ({"jsonl": ".jsonl"} if self.jsonl else {}) | ({"sheet": ".png"} if self.sheet else {})
        if self.output is None:
            for n in itertools.count(1):
                stem = Path("predictions" if n == 1 else f"predictions-{n}")
                paths = {kind: stem.with_suffix(suffix) for kind, suffix in suffixes.items()}
                if self.overwrite or not any(p.exists() for p in paths.values()):
                    return paths
        csv_path = Path(self.output).expanduser()  # the name as given; the other files beside it
        paths = {kind: csv_path if kind == "csv" else csv_path.with_suffix(suffix) for kind, suffix in suffixes.items()}
        taken = [str(p) for p in paths.values() if p.exists()]
        if taken and not self.overwrite:
            raise PredictionError(
                f"{', '.join(taken)} already exist{'s' * (len(taken) == 1)}: pass another --prediction.output,"
                " or --prediction.overwrite true to replace"
            )
        return paths

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        if trainer.world_size > 1:  # on every process, so none waits for the others
            raise PredictionError("predict runs on one device: pass --trainer.devices 1")
        if not trainer.is_global_zero:
            return
        self.paths = self.outputs()
        self.errors, self.total, self.predicted, self._sheet_rows = Counter(), 0, 0, []
        self._stack = ExitStack()
        self._csv = csv.writer(self._stack.enter_context(open_atomically(self.paths["csv"], text=True)))
        self._csv.writerow(COLUMNS)
        self._jsonl = self._stack.enter_context(open_atomically(self.paths["jsonl"], text=True)) if self.jsonl else None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        if self._stack is None:
            return
        probs = prediction["probs"].float().cpu().numpy()
        for i, (path, error) in enumerate(zip(prediction["path"], prediction["error"])):
            self.total += 1
            if error:
                self.errors[error.split(":", 1)[0]] += 1
                row = {"path": path, "digit": None, "confidence": None, "probs": None, "error": error}
            else:
                self.predicted += 1
                p = probs[i]
                digit = int(p.argmax())
                row = {"path": path, "digit": digit, "confidence": float(p[digit]), "probs": [float(v) for v in p], "error": ""}
            self._write(row)
            if self.sheet and len(self._sheet_rows) < self.sheet_count:
                image = batch["image"][i, 0].float().cpu().numpy()  # as the model saw it
                self._sheet_rows.append((path, image, row["digit"], row["confidence"] or 0.0, error))

    def _write(self, row: dict) -> None:
        probs = row["probs"] or [None] * 10
        fmt = [f"{v:.6f}" if v is not None else "" for v in (row["confidence"], *probs)]
        self._csv.writerow([row["path"], "" if row["digit"] is None else row["digit"], *fmt, row["error"]])
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row) + "\n")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._stack is None:
            return
        self.seconds = time.perf_counter() - self._start
        self._stack.close()  # the outputs are complete: rename them into place
        self._stack = None
        if self.sheet:
            from digits_lightning import plots

            rows = [(path, load_original(path, plots.SHEET_SIDE), *rest) for path, *rest in self._sheet_rows]
            fig = plots.prediction_sheet(rows, self.total)
            plots.save_png(plots.render(fig), self.paths["sheet"])
        self._summary(getattr(getattr(trainer.datamodule, "predict_set", None), "hidden", 0))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._stack is not None:  # a failed or interrupted run leaves no partial output behind
            self._stack.__exit__(type(exception), exception, exception.__traceback__)
            self._stack = None

    def _summary(self, hidden: int) -> None:
        rate = self.total / self.seconds if self.seconds > 0 else math.inf
        lines = [f"Predicted {self.predicted:,} of {self.total:,} images in {self.seconds:.2f} s ({rate:,.0f} images/s)"]
        if hidden:
            lines.append(f"Left out {hidden:,} hidden file{'s' * (hidden != 1)} (names starting with '.')")
        if self.errors:
            kinds = ", ".join(f"{n:,} {kind}" for kind, n in self.errors.most_common())
            lines.append(f"Failed: {sum(self.errors.values()):,} ({kinds}); their rows say why, in the error column")
        lines += [f"{label + ':':15}{self.paths[kind]}" for kind, label in
                  (("csv", "Predictions"), ("jsonl", "JSON Lines"), ("sheet", "Contact sheet")) if kind in self.paths]  # fmt: skip
        print("\n".join(lines), flush=True)


def load_original(path: str, size: int) -> np.ndarray | None:
    """A thumbnail of the file as given, in colour, at most `size` pixels a side, RGB uint8
    (transparency on white), or None if it cannot be read."""
    try:
        image = load_image(path, mode="RGB")
        image.thumbnail((size, size))
        if not image.has_transparency_data and image.mode not in DEEP_MODES:
            return np.asarray(image.convert("RGB"))
        gray = np.round(grayscale(image) * 255).astype(np.uint8)  # transparency on white, deep images scaled
        return np.repeat(gray[..., None], 3, axis=2)
    except Exception:  # the row already says why the file failed
        return None
