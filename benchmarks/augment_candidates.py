"""Which file looks the default CNN's augmentation draws: each candidate trained with several seeds,
scored on the validation-built field files (never the test-built ones).

Each candidate is one `python -m digits_lightning fit` per seed (the CLI's defaults plus the
candidate's `--data.augment.*` settings, one torch thread, two fits at a time), then read with
today's `preprocess_file` on the validation-built files of `field_corpus.py` (seeds 1, 3 and 4:
15,000 files). It prints, per candidate, the accuracy per family and their mean over all its
seeds, and the MNIST validation accuracy of the checkpoints `fit` kept (and, for the record only,
the test accuracy `fit` printed: the default must keep it at 99.4 % or more), and the median of
the training times `fit` printed (two fits share the cores, so compare them within one run).

    python benchmarks/augment_candidates.py --data_dir ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.field_corpus import build, digits, load_classifier, ours  # noqa: E402
from benchmarks.hardware import describe  # noqa: E402

CANDIDATES = {
    "none (the distortion alone)": {"square": 0},
    "square 0.1 (the default)": {"square": 0.1},
    "all four 0.1": {"square": 0.1, "low_res": 0.1, "bold": 0.1, "binary": 0.1},
    "bold 0.2, low_res 0.2, binary 0.1, square 0.1": {"square": 0.1, "low_res": 0.2, "bold": 0.2, "binary": 0.1},
    "square 0.1, thin 0.1": {"square": 0.1, "thin": 0.1},
    "square 0.1, thin 0.2": {"square": 0.1, "thin": 0.2},
}
CORPUS_SEEDS = (1, 3, 4)
# The families the candidates are scored on, the ten (column titles): the looks are meant
# for them; the form-like and noisy families later added to field_corpus are the preprocessing's.
COLUMNS = {
    "bold": "bold", "low-res 16x16": "16x16", "low-res 8x8": "8x8", "stretched 16x16 binary": "stretched",
    "faint thin 28x28": "faint", "uneven lighting": "lighting", "ruled/squared paper": "ruled",
    "light on dark": "light on dark", "JPEG q60-90": "JPEG", "coloured ink (RGB)": "RGB",
}  # fmt: skip


def fit(workdir: Path, data_dir: str, cache_dir: str, seed: int, looks: dict[str, float]) -> tuple[Path, float, float]:
    """One `fit` of the default CNN in its own folder: (the kept checkpoint, its printed test
    accuracy, its printed training seconds)."""
    workdir.mkdir(parents=True)
    settings = [f"--data.augment.{name}={share}" for name, share in looks.items()]
    done = subprocess.run(
        [sys.executable, "-m", "digits_lightning", "fit", f"--seed_everything={seed}", f"--data.data_dir={data_dir}",
         f"--data.cache_dir={cache_dir}", "--trainer.enable_progress_bar=false", "--trainer.logger=false", *settings],
        cwd=workdir, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"fit in {workdir} failed:\n{done.stderr[-3000:]}")
    test = float(re.search(r"Test accuracy: ([\d.]+)%", done.stdout).group(1))
    seconds = float(re.search(r"Trained \d+ epochs? in ([\d.]+) s", done.stdout).group(1))
    return next((workdir / "checkpoints" / "cnn").glob("epoch=*.ckpt")), test, seconds


def read(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The model's inputs and the true digits; a file our preprocessing refuses gets truth -1, so
    it counts as wrong whatever the model says of the blank field put in its place."""
    out = [ours(f) for f in files]
    truth = np.array([int(f.stem.split("_")[1]) if o is not None else -1 for f, o in zip(files, out)])
    return np.stack([o if o is not None else np.zeros((28, 28), np.uint8) for o in out]), truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--seeds", type=int, nargs="*", default=[42, 1, 2], help="training seeds per candidate")
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES), metavar="NAME",
                        help="which of CANDIDATES to run (default: all)")
    parser.add_argument("--work_dir", default=None, help="where the fits and the files go (default: a temp folder)")
    args = parser.parse_args()
    print(describe())
    data_dir = str(Path(args.data_dir).resolve())  # the fits run in folders of their own
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="augment-candidates-"))
    cache = str(work / "cache")
    images, labels = digits(data_dir, cache, "val")
    corpora = [build(work / f"val-500-seed{s}", images, labels, 500, seed=s) for s in CORPUS_SEEDS]
    jobs = [(name, seed) for seed in args.seeds for name in args.candidates]  # interleaved: the VM drifts

    def run(k: int) -> tuple[Path, float, float]:
        name, seed = jobs[k]
        return fit(work / f"fit-{k}", data_dir, cache, seed, CANDIDATES[name])

    with ThreadPoolExecutor(2) as pool:  # two one-thread fits share the two cores
        fits = dict(zip(jobs, pool.map(run, range(len(jobs)))))
    # Read once: the preprocessing does not depend on the checkpoint.
    inputs = {name: [read(files[name]) for files in corpora] for name in COLUMNS}
    seeds = ", ".join(map(str, args.seeds))
    print(f"\n{len(args.seeds)} seeds each ({seeds}), {len(CORPUS_SEEDS) * 500:,} validation-built files per family\n")
    print("| candidate | " + " | ".join(COLUMNS.values()) + " | mean | MNIST val | (test) | training |")
    print("|---|" + "---:|" * (len(COLUMNS) + 4))
    for name in args.candidates:
        right = np.zeros(len(COLUMNS))
        vals, tests, seconds = [], [], []
        for seed in args.seeds:
            ckpt, test, took = fits[(name, seed)]
            seconds.append(took)
            classify = load_classifier(ckpt)
            vals.append(float(re.search(r"val_acc=(\d\.\d+)", ckpt.name).group(1)))
            tests.append(test)
            for k, family in enumerate(COLUMNS):
                for x, truth in inputs[family]:
                    right[k] += (classify(x) == truth).mean() / len(inputs[family])
        scores = 100 * right / len(args.seeds)
        print(f"| {name} | " + " | ".join(f"{s:.2f}" for s in scores) + f" | {scores.mean():.2f} | "
              f"{100 * np.mean(vals):.2f} | {np.mean(tests):.2f} | {np.median(seconds):.1f} s |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
