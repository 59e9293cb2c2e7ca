"""The default CNN's widths against its training time and validation accuracy, to choose a cheaper
network on validation.

Each candidate is the default `fit` (configs/cnn.yaml's recipe) with other `--model.channels` and
`--model.hidden`, trained once per seed in a fresh process, the candidates interleaved seed by seed
so that the machine's drift falls on all of them alike. For each: the best validation accuracy of
each run (what the checkpoint is chosen on), their mean, the fit loop's time ("Trained N epochs in
X s"), and that time against the first candidate's. The test accuracy the fit prints is not read:
this script is for choosing.

    python benchmarks/cnn_widths.py --data_dir ../shared/datasets/mnist
    python benchmarks/cnn_widths.py --data_dir ../shared/datasets/mnist --candidates 24,32,256 16,32,256 --seeds 42 1 2
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.hardware import describe  # noqa: E402
from benchmarks.train_speed import run_with_usage  # noqa: E402


def candidate(text: str) -> tuple[int, int, int]:
    """The two convolutions' channels and the dense layer's width, "24,32,256" -> (24, 32, 256)."""
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"a candidate is C1,C2,HIDDEN, got {text!r}")
    return values


def best_val_acc(folder: Path) -> float:
    """The best validation accuracy of a run, in %, from its best checkpoint's name."""
    scores = [float(m.group(1)) for p in folder.rglob("*.ckpt") if (m := re.search(r"val_acc=([\d.]+)\.ckpt$", p.name))]
    if not scores:
        raise SystemExit(f"no checkpoint named by its val_acc under {folder}")
    return 100 * max(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--candidates", nargs="+", type=candidate, default=[(24, 32, 256), (16, 32, 256), (16, 32, 128)])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    print(describe())
    cache = tempfile.mkdtemp(prefix="mnist-cache-")
    runs: dict[tuple[int, int, int], tuple[list[float], list[float]]] = {c: ([], []) for c in args.candidates}
    for seed in args.seeds:
        for (c1, c2, hidden), (accs, times) in runs.items():
            with tempfile.TemporaryDirectory() as cwd:
                text, _, _ = run_with_usage(
                    [sys.executable, "-m", "digits_lightning", "fit", "--config", str(ROOT / "configs" / "cnn.yaml"),
                     f"--data.data_dir={Path(args.data_dir).resolve()}", f"--data.cache_dir={cache}",
                     "--trainer.enable_progress_bar=false", f"--trainer.precision={args.precision}",
                     f"--seed_everything={seed}", f"--model.channels=[{c1},{c2}]", f"--model.hidden={hidden}"],
                    cwd=cwd,
                )  # fmt: skip
                accs.append(best_val_acc(Path(cwd)))
            times.append(float(re.search(r"Trained \d+ epochs? in ([\d.]+) s", text).group(1)))
    first = statistics.median(runs[args.candidates[0]][1])
    print(f"\n{args.precision}, seeds {', '.join(map(str, args.seeds))}")
    print(f"{'channels, hidden':18s} {'best val acc (runs)':32s} {'mean':>7s} {'training':>9s} {'speed-up':>9s}")
    for (c1, c2, hidden), (accs, times) in runs.items():
        trained = statistics.median(times)
        print(
            f"{f'[{c1},{c2}], {hidden}':18s} {', '.join(f'{a:.2f}' for a in accs):32s} {statistics.mean(accs):6.2f}% "
            f"{trained:8.1f}s {first / trained:8.2f}x"
        )


if __name__ == "__main__":
    main()
