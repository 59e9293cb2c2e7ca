"""`python -m digits_lightning predict-onnx`: `predict` from an exported model, without torch or Lightning.

The same experience as `predict`: a file, a folder or a glob in (`image_files.find_images`); each
file decoded as `predict` decodes it (`conventions.read`, in the model's convention), in a few processes when there
are several batches; the same CSV, JSON Lines, contact sheet and summary out (`results.Results`);
the same error rows, one-line errors (exit status 2) and exit status 3 when no file could be read.
It needs onnxruntime, numpy and Pillow; matplotlib only for `--prediction.sheet`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import multiprocessing
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from digits_lightning.errors import UserError, fail
from digits_lightning.cpus import usable_cpus
from digits_lightning import conventions
from digits_lightning.image_files import find_images
from digits_lightning.onnx_runtime import OnnxClassifier
from digits_lightning.preprocess import FIELD
from digits_lightning.results import NothingPredicted, Results

DEFAULT_FOLDER = Path("checkpoints") / "cnn"  # where `export` puts the default CNN's models


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and status 2, as every other command
        raise UserError(f"{message} (python -m digits_lightning predict-onnx --help)")


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return lowered in ("true", "1", "yes")


def parser() -> argparse.ArgumentParser:
    """`predict`'s options, by the same names (argparse: jsonargparse is not in the minimal install)."""
    p = _Parser(
        prog="python -m digits_lightning predict-onnx",
        description="Predict the digits in image files with an ONNX model written by `export`, without torch or Lightning.",
    )
    p.add_argument("--onnx_path", help=f"the model from `export` (default: the newest *.onnx in {DEFAULT_FOLDER}, not int8)")
    p.add_argument(
        "--data.predict_path", dest="predict_path", required=True, help="an image file, a folder (searched recursively) or a glob"
    )
    p.add_argument("--data.predict_batch_size", dest="batch_size", type=int, default=256, help="images per batch")
    p.add_argument("--data.predict_workers", dest="workers", type=int, default=2, help="processes that decode the files")
    p.add_argument("--prediction.output", dest="output", help="the CSV (default predictions.csv, or predictions-2.csv, ...)")
    flag = {"type": _bool, "nargs": "?", "const": True, "default": False, "metavar": "true|false"}
    p.add_argument("--prediction.jsonl", dest="jsonl", **flag, help="also write the rows as JSON Lines beside the CSV")
    p.add_argument("--prediction.sheet", dest="sheet", **flag, help="also draw a contact sheet beside the CSV (needs matplotlib)")
    p.add_argument("--prediction.sheet_count", dest="sheet_count", type=int, default=48, help="images on the contact sheet")
    p.add_argument("--prediction.overwrite", dest="overwrite", **flag, help="replace existing outputs")
    return p


def newest_model(folder: Path = DEFAULT_FOLDER) -> Path:
    found = sorted((p for p in folder.glob("*.onnx") if not p.name.endswith(".int8.onnx")), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no ONNX model in {folder}: export one first (python -m digits_lightning export --ckpt_path CKPT),"
                        " or pass --onnx_path")  # fmt: skip
    print(f"Using model {found[-1]} (the newest in {folder}; choose another with --onnx_path)", flush=True)
    return found[-1]


def decoding_workers(files: int, batch_size: int, workers: int) -> int:
    """Up to `workers` processes, no more than there are batches; none for one batch, which this
    process decodes as fast without starting any (as `prediction.ImageFiles.loader`)."""
    batches = math.ceil(files / batch_size)
    return min(workers, batches) if batches > 1 else 0


def decoders(workers: int):
    """A pool of `workers` forked processes, or None (decode in this process). Forked, not spawned:
    spawned workers would run `python -m digits_lightning` again; where there is no fork, none."""
    if not workers or "fork" not in multiprocessing.get_all_start_methods():
        return contextlib.nullcontext(None)
    return multiprocessing.get_context("fork").Pool(workers)


def decoded(paths: list[str], pool, convention: str) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """The files decoded into the model's convention, in order."""
    read = functools.partial(conventions.read, convention=convention)
    results = map(read, paths) if pool is None else pool.imap(read, paths, chunksize=16)
    yield from ((path, *result) for path, result in zip(paths, results))


def run(args: list[str]) -> Results:
    config = parser().parse_args(args)
    for name, value, least in (("data.predict_batch_size", config.batch_size, 1), ("data.predict_workers", config.workers, 0)):
        if value < least:
            raise UserError(f"{name} must be at least {least}, got {value}")
    results = Results(config.output, config.jsonl, config.sheet, config.sheet_count, config.overwrite)
    if config.sheet:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--prediction.sheet needs matplotlib: pip install matplotlib (or leave the sheet out)") from None
    paths, hidden = find_images(config.predict_path)
    results.outputs()  # an existing output is refused before any work
    workers = decoding_workers(len(paths), config.batch_size, config.workers)
    # The workers are forked before the model starts its threads: a fork copies only the thread
    # that forks, and a lock another one held would stay locked in the copy.
    with decoders(workers) as pool:
        # The model gets the cores the workers leave (see `prediction.PredictThreads`).
        model = OnnxClassifier(config.onnx_path or newest_model(), threads=max(1, usable_cpus() - workers) if workers else None)
        start = time.perf_counter()
        results.open(model.class_names)
        try:
            batch: list[tuple[str, np.ndarray | None, str]] = []
            for item in decoded(paths, pool, model.convention):
                batch.append(item)
                if len(batch) == config.batch_size:
                    _predict(model, batch, results)
                    batch = []
            if batch:
                _predict(model, batch, results)
        except BaseException as err:
            results.abort(err)
            raise
        seconds = time.perf_counter() - start
    results.close(seconds, hidden)
    if results.total and not results.predicted:
        raise NothingPredicted(
            f"none of the {results.total:,} images could be predicted: {results.paths['csv']} says why for each"
        )
    return results


def _predict(model: OnnxClassifier, batch: list, results: Results) -> None:
    good = [image for _, image, _ in batch if image is not None]
    probs = iter(model.probabilities(np.stack(good)) if good else [])
    black = np.zeros((FIELD, FIELD), np.float32)  # what the contact sheet shows of a file that failed
    for path, image, error in batch:
        seen = image / np.float32(255) if image is not None else black
        results.add(path, next(probs) if image is not None else None, error, seen if results.sheet else None)


def main(args: list[str] | None = None) -> None:
    """The user's mistakes end as one line on stderr and exit status 2; no file predicted, status 3."""
    try:
        run(sys.argv[1:] if args is None else list(args))
    except UserError as err:  # NothingPredicted included, with its own status
        fail(err)
