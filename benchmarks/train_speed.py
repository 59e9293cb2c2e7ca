"""Time to accuracy, whole-process time and memory footprint of `fit` for each config.

Each run is a real `python -m digits_lightning fit --config X` in a fresh folder; the script reads
the fit loop's own time ("Trained N epochs in X s") and the test accuracy it prints, measures the
whole process from start to exit, and its peak RSS minus that of a bare
`import torch, torchvision, lightning` (the package's own footprint). Medians over --repeats.

    python benchmarks/train_speed.py --data_dir ../shared/datasets/mnist
    python benchmarks/train_speed.py --data_dir ../shared/datasets/mnist --configs configs/cnn_best.yaml
    python benchmarks/train_speed.py --data_dir ../shared/datasets/mnist --configs configs/cnn.yaml --precisions 32-true bf16-mixed

`--precisions` runs each config in each precision, interleaved repeat by repeat, to tell which one
`fit` should choose on this machine.
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

TARGETS = {  # config: (test accuracy %, training seconds, whole-process seconds) from the issue
    "dense.yaml": (98.0, 8.0, 25.0),
    "cnn.yaml": (99.0, 20.0, 40.0),
    "cnn_best.yaml": (99.5, 300.0, None),
}


def run(command: list[str], cwd: str) -> tuple[str, float, float]:
    """Output, wall seconds and peak RSS (MB) of one child process."""
    text, wall, usage = run_with_usage(command, cwd)
    return text, wall, usage.ru_maxrss / 1024


def run_with_usage(command: list[str], cwd: str) -> tuple[str, float, os.struct_rusage]:
    """Output, wall seconds and resource usage (CPU times, page faults, peak RSS) of one child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{text[-3000:]}")
    return text, wall, usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--configs", nargs="+", default=[str(ROOT / "configs" / c) for c in ("dense.yaml", "cnn.yaml")])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=[None], help="--trainer.precision values (default: fit's choice)")
    parser.add_argument("extra", nargs="*", help="more fit arguments, after --")
    args = parser.parse_args()
    print(describe())
    cache = tempfile.mkdtemp(prefix="mnist-cache-")
    env_python = [sys.executable]
    _, _, bare_rss = run([*env_python, "-c", "import torch, torchvision, lightning"], cwd=cache)
    print(f"baseline: bare import torch, torchvision, lightning peaks at {bare_rss:.0f} MB RSS")
    for config in args.configs:
        runs = {precision: ([], [], [], []) for precision in args.precisions}  # trained, accs, walls, rss
        for _ in range(args.repeats):
            for precision, (trained, accs, walls, rss) in runs.items():
                chosen = [f"--trainer.precision={precision}"] if precision else []
                with tempfile.TemporaryDirectory() as cwd:
                    text, wall, peak = run(
                        [*env_python, "-m", "digits_lightning", "fit", "--config", str(Path(config).resolve()),
                         f"--data.data_dir={Path(args.data_dir).resolve()}", f"--data.cache_dir={cache}",
                         "--trainer.enable_progress_bar=false", *chosen, *args.extra],
                        cwd=cwd,
                    )  # fmt: skip
                trained.append(float(re.search(r"Trained \d+ epochs? in ([\d.]+) s", text).group(1)))
                accs.append(float(re.search(r"Test accuracy: ([\d.]+)%", text).group(1)))
                walls.append(wall)
                rss.append(peak - bare_rss)
        for precision, (trained, accs, walls, rss) in runs.items():
            report(Path(config).name + (f" {precision}" if precision else ""), trained, accs, walls, rss, TARGETS.get(Path(config).name))


def report(name: str, trained: list[float], accs: list[float], walls: list[float], rss: list[float], target) -> None:
    target = target or (None, None, None)
    print(f"{name}: test accuracy {statistics.median(accs):.2f}% (runs: {', '.join(f'{a:.2f}' for a in accs)}; target >= {target[0]})")
    print(f"{name}: training {statistics.median(trained):.1f} s (runs: {', '.join(f'{t:.1f}' for t in trained)}; target <= {target[1]})")
    print(f"{name}: whole process {statistics.median(walls):.1f} s (runs: {', '.join(f'{t:.1f}' for t in walls)}; target <= {target[2]})")
    print(f"{name}: own memory {statistics.median(rss):.0f} MB peak RSS above the bare imports (target < 400)")


if __name__ == "__main__":
    main()
