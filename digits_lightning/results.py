"""Writing what `predict` found, with no torch: one CSV row (and optionally one JSON line) per file,
streamed as batches finish so memory stays flat for any number of files, an optional contact
sheet, and the summary. Outputs are renamed into place only when complete.

Used by the Lightning `prediction.PredictionWriter` and by any runtime that gives probabilities.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from digits_lightning.atomic_write import open_atomically
from digits_lightning.errors import EXIT_NOTHING_PREDICTED
from digits_lightning.image_files import PredictionError


class NothingPredicted(PredictionError):
    """Every file failed: the run is over, and its exit status must say so."""

    exit_status = EXIT_NOTHING_PREDICTED


def columns(class_names) -> list[str]:
    return ["path", "digit", "label", "confidence", *(f"p{i}" for i in range(len(class_names))), "error"]


class Results:
    """The outputs of one prediction run.

    Args:
        output: The CSV file. By default `predictions.csv` in the current folder, or
            `predictions-2.csv`, ... if that is taken (with its `.jsonl` or `.png`).
        jsonl: Also write the rows as JSON Lines, beside the CSV with the suffix `.jsonl`.
        sheet: Also draw a contact sheet (beside the CSV, suffix `.png`): each image as given, as the
            model saw it (28x28), the prediction and the confidence.
        sheet_count: How many images the contact sheet shows (the first in the CSV's order).
        overwrite: Replace existing outputs. Without it, a named output that exists is an error.
    """

    def __init__(
        self, output: str | None = None, jsonl: bool = False, sheet: bool = False, sheet_count: int = 48,
        overwrite: bool = False,
    ) -> None:  # fmt: skip
        if sheet_count < 1:
            raise PredictionError(f"prediction.sheet_count must be at least 1, got {sheet_count}")
        self.output, self.jsonl, self.sheet, self.sheet_count, self.overwrite = output, jsonl, sheet, sheet_count, overwrite
        self.paths: dict[str, Path] = {}
        self.errors: Counter[str] = Counter()
        self.total = self.predicted = 0
        self._stack: ExitStack | None = None
        self._sheet_rows: list[tuple] = []

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

    def open(self, class_names) -> None:
        self.class_names = [str(name) for name in class_names]
        self.paths = self.outputs()
        self.errors, self.total, self.predicted, self._sheet_rows = Counter(), 0, 0, []
        self._stack = ExitStack()
        self._csv = csv.writer(self._stack.enter_context(open_atomically(self.paths["csv"], text=True)))
        self._csv.writerow(columns(self.class_names))
        self._jsonl = self._stack.enter_context(open_atomically(self.paths["jsonl"], text=True)) if self.jsonl else None

    def add(self, path: str, probs: np.ndarray | None, error: str, seen: np.ndarray | None = None) -> None:
        """One file's row: its class probabilities, or the error (`kind: message`) that stopped it.
        `seen` is the 28x28 image the model got, for the contact sheet."""
        self.total += 1
        if error:
            self.errors[error.split(":", 1)[0]] += 1
            index = label = confidence = values = None
        else:
            self.predicted += 1
            index = int(probs.argmax())
            label, confidence, values = self.class_names[index], float(probs[index]), [float(v) for v in probs]
        fmt = [f"{v:.6f}" if v is not None else "" for v in (confidence, *(values or [None] * len(self.class_names)))]
        self._csv.writerow([path, "" if index is None else index, label or "", *fmt, error])
        if self._jsonl is not None:
            row = {"path": path, "digit": index, "label": label, "confidence": confidence, "probs": values, "error": error}
            self._jsonl.write(json.dumps(row) + "\n")
        if self.sheet and len(self._sheet_rows) < self.sheet_count:
            self._sheet_rows.append((path, seen, label, confidence or 0.0, error))

    def close(self, seconds: float, hidden: int = 0) -> None:
        """Rename the complete outputs into place, draw the contact sheet, print the summary."""
        self._stack.close()
        self._stack = None
        if self.sheet:
            from digits_lightning import plots
            from digits_lightning.preprocess import load_original

            rows = [(path, load_original(path, plots.SHEET_SIDE), *rest) for path, *rest in self._sheet_rows]
            plots.save_png(plots.render(plots.prediction_sheet(rows, self.total)), self.paths["sheet"])
        print(self.summary(seconds, hidden), flush=True)

    def abort(self, exception: BaseException) -> None:
        """A failed or interrupted run leaves no partial output behind."""
        if self._stack is not None:
            self._stack.__exit__(type(exception), exception, exception.__traceback__)
            self._stack = None

    def summary(self, seconds: float, hidden: int = 0) -> str:
        rate = self.total / seconds if seconds > 0 else math.inf
        lines = [f"Predicted {self.predicted:,} of {self.total:,} images in {seconds:.2f} s ({rate:,.0f} images/s)"]
        if hidden:
            lines.append(f"Left out {hidden:,} hidden file{'s' * (hidden != 1)} (names starting with '.')")
        if self.errors:
            kinds = ", ".join(f"{n:,} {kind}" for kind, n in self.errors.most_common())
            lines.append(f"Failed: {sum(self.errors.values()):,} ({kinds}); their rows say why, in the error column")
        lines += [f"{label + ':':15}{self.paths[kind]}" for kind, label in
                  (("csv", "Predictions"), ("jsonl", "JSON Lines"), ("sheet", "Contact sheet")) if kind in self.paths]  # fmt: skip
        return "\n".join(lines)
