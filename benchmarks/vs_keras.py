"""The two reference programs in Keras against our two configs, interleaved in one run.

The references, as they describe themselves:
  - dense: Flatten -> Dense(128, relu) -> Dense(10, softmax), Adam, sparse categorical
    cross-entropy, inputs / 255, batch 32, 10 epochs;
  - Keras's "simple MNIST convnet": Conv2D(32, 3, relu) -> MaxPool(2) -> Conv2D(64, 3, relu) ->
    MaxPool(2) -> Flatten -> Dropout(0.5) -> Dense(10, softmax), Adam, batch 128, 10 epochs,
    validation split 0.1.
They run in a virtual environment of their own (`tensorflow-cpu` from the registry, made on first
use), on the same archives; ours are `fit --config configs/dense.yaml` and the default `fit`, in
float32 (`--trainer.precision 32-true`) and, where this CPU computes bfloat16 natively, also in
the bf16 that `fit` then chooses. For each: training seconds (Keras's `model.fit`, our fit loop),
whole-process seconds, test accuracy, and the ratios.

    python benchmarks/vs_keras.py --data_dir ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.hardware import describe  # noqa: E402
from digits_lightning.devices import native_bf16  # noqa: E402

KERAS = r'''
import gzip, sys, time
import numpy as np
start = time.perf_counter()
import tensorflow as tf
from tensorflow import keras

def idx(path):
    data = gzip.open(path).read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)

folder, which = sys.argv[1], sys.argv[2]
x_train, y_train = idx(f"{folder}/train-images-idx3-ubyte.gz") / 255.0, idx(f"{folder}/train-labels-idx1-ubyte.gz")
x_test, y_test = idx(f"{folder}/t10k-images-idx3-ubyte.gz") / 255.0, idx(f"{folder}/t10k-labels-idx1-ubyte.gz")
keras.utils.set_random_seed(42)
if which == "dense":
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    fit = dict(batch_size=32, epochs=10)
else:
    x_train, x_test = x_train[..., None], x_test[..., None]
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(32, 3, activation="relu"),
                              keras.layers.MaxPooling2D(2), keras.layers.Conv2D(64, 3, activation="relu"),
                              keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dropout(0.5),
                              keras.layers.Dense(10, activation="softmax")])
    fit = dict(batch_size=128, epochs=10, validation_split=0.1)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
began = time.perf_counter()
model.fit(x_train, y_train, verbose=0, **fit)
trained = time.perf_counter() - began
_, acc = model.evaluate(x_test, y_test, verbose=0)
print(f"Trained {fit['epochs']} epochs in {trained:.1f} s")
print(f"Test accuracy: {100 * acc:.2f}%")
'''


def keras_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists() or subprocess.run([python, "-c", "import tensorflow"], capture_output=True).returncode:
        print(f"making the references' environment in {venv} (tensorflow-cpu from the registry) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "tensorflow-cpu"], check=True)
    return python


def timed(command: list, cwd: str, env: dict | None = None) -> tuple[float, float, float]:
    """Training seconds, test accuracy and whole-process seconds of one run that prints them."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command[:4]))} ... failed:\n{out[-3000:]}")
    trained = float(re.search(r"Trained \d+ epochs? in ([\d.]+) s", out).group(1))
    return trained, float(re.search(r"Test accuracy: ([\d.]+)%", out).group(1)), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="a folder holding the four MNIST archives")
    parser.add_argument("--venv", default=str(Path.home() / ".cache" / "digits_lightning" / "keras-venv"))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(describe())
    keras = keras_python(Path(args.venv))
    data = str(Path(args.data_dir).resolve())
    cache = tempfile.mkdtemp(prefix="mnist-cache-")
    precisions = ["32-true"] + (["bf16-mixed"] if native_bf16("cpu") else [])
    ours = {"dense": ["--config", str(ROOT / "configs" / "dense.yaml")], "cnn": []}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    results: dict[str, list] = {}
    for _ in range(args.repeats):  # interleaved: each reference beside our run of the same network
        for net in ("dense", "cnn"):
            with tempfile.TemporaryDirectory() as cwd:
                results.setdefault(f"keras {net}", []).append(timed([keras, "-c", KERAS, data, net], cwd, env))
            for precision in precisions:
                with tempfile.TemporaryDirectory() as cwd:
                    command = [sys.executable, "-m", "digits_lightning", "fit", *ours[net], f"--data.data_dir={data}",
                               f"--data.cache_dir={cache}", f"--trainer.precision={precision}",
                               "--trainer.enable_progress_bar=false"]  # fmt: skip
                    results.setdefault(f"ours {net} {precision}", []).append(timed(command, cwd))
    medians = {name: [statistics.median(r[i] for r in runs) for i in range(3)] for name, runs in results.items()}
    print(f"\n{'run (medians of ' + str(args.repeats) + ')':28} {'training':>10} {'whole process':>14} {'test accuracy':>14} {'training vs Keras':>18}")
    for name, (trained, acc, wall) in medians.items():
        net = name.split()[1]
        ratio = medians[f"keras {net}"][0] / trained
        print(f"{name:28} {trained:9.1f}s {wall:13.1f}s {acc:13.2f}% {ratio:17.1f}x")


if __name__ == "__main__":
    main()
