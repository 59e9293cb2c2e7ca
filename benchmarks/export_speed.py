"""The checkpoint (torch), its ONNX export and its int8 export, on the CPU: size, speed, start-up, agreement.

Exports the checkpoint with the real `python -m digits_lightning export`, then prints for each:
  - size on disk (the checkpoint also holds the optimiser's state: what `fit` resumes from);
  - single-image latency of the model alone, one preprocessed digit `[1, 1, 28, 28]`, median and
    95th percentile over interleaved rounds (the machine is shared: interleaving spreads its noise);
  - batch throughput over the 10,000 MNIST test images in batches of 256;
  - the time from process start to the first prediction of one image file: the whole `predict`
    (torch and Lightning) or `predict-onnx` process, start to exit, its CSV row written
    (target <= 0.5 s for ONNX);
  - agreement with the checkpoint on the MNIST test set: the share of identical digits (target
    >= 99.9% for the float model) and the accuracy (target: int8 within 0.2 points);
  - a folder of --files user-like files (`predict_folder.py`'s) through `predict` and `predict-onnx`
    (with and without decoding workers): the loop's throughput as the command reports it, and the
    whole process.
With --calibration_choices it also compares calibrations of the int8 model on validation images
the calibration did not see (how `export`'s defaults were chosen).

    python benchmarks/export_speed.py --data_dir ../shared/datasets/mnist
    python benchmarks/export_speed.py --data_dir ../shared/datasets/mnist --ckpt_path a.ckpt --calibration_choices

Without --ckpt_path it first trains the default CNN (`fit` with no config) in a temporary folder.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.hardware import describe  # noqa: E402
from benchmarks.predict_folder import render, train_default  # noqa: E402
from digits_lightning.checkpoints import load_classifier  # noqa: E402
from digits_lightning.data import MNISTDataModule  # noqa: E402
from digits_lightning.onnx_runtime import OnnxClassifier  # noqa: E402


def latencies(runners: dict, x: np.ndarray, rounds: int, calls: int) -> dict[str, list[float]]:
    """Seconds per call of each runner on `x`, in interleaved rounds of `calls` calls each."""
    times = {name: [] for name in runners}
    for run in runners.values():  # warm-up: first calls allocate and pick kernels
        for _ in range(20):
            run(x)
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(calls):
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
    return times


def throughput(run, images: np.ndarray, batch: int = 256, repeats: int = 3) -> float:
    """Images per second over all of `images` in batches (the best of `repeats` passes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            run(images[i : i + batch])
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def fresh_process(args: list[str], cwd: Path) -> float:
    return timed_process(args, cwd)[0]


def timed_process(args: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds from the process's start to its exit, and what it printed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "digits_lightning", *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def folder_rates(ckpt: Path, float_path: Path, images: np.ndarray, labels: np.ndarray, n: int, work: Path) -> None:
    """`predict` against `predict-onnx` on a folder of `n` user-like files (the first test digits)."""
    from benchmarks.predict_folder import write_folder

    folder = work / "folder"
    write_folder(folder, torch.from_numpy(images[:n]), torch.from_numpy(labels[:n]), seed=0)
    out = [f"--data.predict_path={folder}", f"--prediction.output={work / 'f.csv'}", "--prediction.overwrite=true"]
    runs = {
        "predict (torch, 2 decoding workers)": ["predict", f"--ckpt_path={ckpt}", "--trainer.enable_progress_bar=false", *out],
        "predict-onnx (2 decoding workers)": ["predict-onnx", f"--onnx_path={float_path}", *out],
        "predict-onnx (decoding in-process)": ["predict-onnx", f"--onnx_path={float_path}", "--data.predict_workers=0", *out],
    }
    print(f"\n{n:,} user-like files (PNG, RGB, RGBA, JPEG; as predict_folder.py writes them), one run each:")
    print("| command | prediction loop | whole process |\n|---|---|---|")
    for name, args in runs.items():
        seconds, printed = timed_process(args, work)
        loop = float(re.search(r"images in ([\d.]+) s", printed).group(1))
        print(f"| {name} | {n / loop:,.0f} images/s | {seconds:.1f} s ({n / seconds:,.0f} images/s) |")


def calibration_choices(float_path: Path, ckpt: Path, args) -> None:
    """int8 variants calibrated on the first validation images, judged on the rest."""
    from digits_lightning.export import export_int8, validation_images

    images, labels = validation_images(ckpt, args.data_dir, args.cache_dir, False)
    held, held_labels = images[1000:], labels[1000:]
    reference = OnnxClassifier(float_path).probabilities(held).argmax(1)
    print(f"\ncalibration choices, judged on {len(held):,} validation images the calibration did not see"
          f" (float model: {(reference == held_labels).mean():.2%} accuracy):")  # fmt: skip
    print("| method | images | 7-bit weights | accuracy | same digit as float |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for method, n, reduce_range in [("MinMax", 500, True), ("MinMax", 500, False), ("MinMax", 200, True),
                                        ("MinMax", 1000, True), ("Percentile", 500, True), ("Entropy", 500, True)]:  # fmt: skip
            out = Path(tmp) / f"{method}-{n}-{reduce_range}.onnx"
            export_int8(float_path, images[:n], out, method, reduce_range)
            got = OnnxClassifier(out).probabilities(held).argmax(1)
            print(f"| {method} | {n} | {'yes' if reduce_range else 'no'} | {(got == held_labels).mean():.2%} |"
                  f" {(got == reference).mean():.2%} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--ckpt_path", default=None, help="the checkpoint to export (default: train one)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of single-image calls")
    parser.add_argument("--calls", type=int, default=100, help="single-image calls per round and model")
    parser.add_argument("--starts", type=int, default=5, help="fresh processes per command")
    parser.add_argument("--files", type=int, default=1000, help="user-like files for the folder comparison (0: none)")
    parser.add_argument("--calibration_choices", action="store_true")
    args = parser.parse_args()
    print(describe())
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    args.cache_dir = args.cache_dir or str(work / "cache")
    ckpt = Path(args.ckpt_path).resolve() if args.ckpt_path else train_default(args.data_dir, args.cache_dir, work)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "digits_lightning", "export", f"--ckpt_path={ckpt}", f"--out={work}",
         f"--data.data_dir={args.data_dir}", f"--data.cache_dir={args.cache_dir}", "--data.download=false"],
        check=True,
    )  # fmt: skip
    print(f"export took {time.perf_counter() - start:.1f} s (process included)")
    paths = {"checkpoint (torch)": ckpt, "ONNX float32": work / f"{ckpt.stem}.onnx", "ONNX int8": work / f"{ckpt.stem}.int8.onnx"}

    dm = MNISTDataModule(args.data_dir, cache_dir=args.cache_dir, download=False, on_device=False)
    dm.prepare_data()
    dm.setup("test")
    images, labels = dm.test_set.images.numpy(), dm.test_set.labels.numpy()

    model = load_classifier(ckpt)
    sessions = {name: OnnxClassifier(path) for name, path in paths.items() if path.suffix == ".onnx"}

    @torch.no_grad()
    def torch_run(batch: np.ndarray) -> np.ndarray:  # as `predict` computes: float32, softmax
        return model(torch.from_numpy(batch).unsqueeze(1) / 255).float().softmax(1).numpy()

    runners = {"checkpoint (torch)": torch_run, **{name: s.probabilities for name, s in sessions.items()}}
    times = latencies(runners, images[:1], args.rounds, args.calls)
    rates = {name: throughput(run, images) for name, run in runners.items()}
    digits = {name: np.concatenate([run(b) for b in np.array_split(images, 10)]).argmax(1) for name, run in runners.items()}

    one = work / "one"
    one.mkdir()
    image, suffix = render(images[0], np.random.default_rng(0))
    image.save(one / f"digit{suffix}")
    file = one / f"digit{suffix}"
    common = [f"--data.predict_path={file}", f"--prediction.output={work / 'p.csv'}", "--prediction.overwrite=true"]
    commands = {
        "checkpoint (torch)": ["predict", f"--ckpt_path={ckpt}", "--trainer.enable_progress_bar=false", *common],
        **{name: ["predict-onnx", f"--onnx_path={paths[name]}", *common] for name in sessions},
    }
    starts = {name: [] for name in commands}
    for _ in range(args.starts):  # interleaved
        for name, command in commands.items():
            starts[name].append(fresh_process(command, work))

    expected = digits["checkpoint (torch)"]
    accuracy = {name: (d == labels).mean() for name, d in digits.items()}
    print(f"\nCPU threads: torch {torch.get_num_threads()}, onnxruntime its default (every core)")
    print("| model | size on disk | one image: median | p95 | batch of 256 | fresh process, one file |"
          " same digit as checkpoint | test accuracy |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, path in paths.items():
        ms = np.array(times[name]) * 1000
        size = path.stat().st_size
        ratio = f" ({paths['ONNX float32'].stat().st_size / size:.1f}x smaller than float)" if name == "ONNX int8" else ""
        print(
            f"| {name} | {size / 1024:,.0f} KB{ratio} | {np.median(ms):.3f} ms | {np.percentile(ms, 95):.3f} ms |"
            f" {rates[name]:,.0f} images/s | {statistics.median(starts[name]):.2f} s"
            f" ({min(starts[name]):.2f}-{max(starts[name]):.2f}) | {(digits[name] == expected).mean():.2%} |"
            f" {accuracy[name]:.2%} ({100 * (accuracy[name] - accuracy['checkpoint (torch)']):+.2f} points) |"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ms = np.array(latencies({"torch": torch_run}, images[:1], args.rounds, args.calls)["torch"]) * 1000
    torch.set_num_threads(threads)
    print(f"checkpoint (torch) on 1 thread, one image: median {np.median(ms):.3f} ms, p95 {np.percentile(ms, 95):.3f} ms"
          f" (on {threads} threads a call waits for every thread: slow where another process holds a core)")  # fmt: skip
    if args.files:
        folder_rates(ckpt, paths["ONNX float32"], images, labels, args.files, work)
    if args.calibration_choices:
        calibration_choices(paths["ONNX float32"], ckpt, args)


if __name__ == "__main__":
    main()
