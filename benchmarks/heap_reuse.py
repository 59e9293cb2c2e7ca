"""What `digits_lightning/heap.py` buys a `fit`: the same fit with glibc's malloc keeping the
memory each step frees (as every command runs) and without (glibc's own thresholds), interleaved.

Each run is a real default `fit` in a fresh process (this script re-invoked with `--child`, which
switches the setting off by replacing the CLI's call with a no-op for the `without` runs). Printed
per variant, medians over --repeats: the fit loop's time as `fit` prints it, the process's user and
system CPU seconds, its page faults, its peak RSS and the test accuracy; and whether the trained
weights of all runs are the same, bit for bit (only where memory lives should change).

    python benchmarks/heap_reuse.py --data_dir ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import hashlib
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.train_speed import run_with_usage  # noqa: E402


def child(setting: str, fit_args: list[str]) -> None:
    import digits_lightning.cli as cli

    if setting == "without":
        cli.keep_freed_memory = lambda: False
    from digits_lightning.__main__ import exit_now

    cli.main(fit_args)
    exit_now(0)


def weights_digest(checkpoint: Path) -> str:
    """A digest of the trained weights' bytes: equal digests, bit-for-bit equal weights."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def run(setting: str, fit: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as cwd:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", setting, "--", *fit]
        text, _, usage = run_with_usage(command, cwd)
        weights = weights_digest(Path(cwd) / "checkpoints" / "cnn" / "last.ckpt")
    return {
        "weights": weights,
        "training s": float(re.search(r"Trained \d+ epochs? in ([\d.]+) s", text).group(1)),
        "user CPU s": usage.ru_utime,
        "system CPU s": usage.ru_stime,
        "page faults": usage.ru_minflt,
        "peak RSS MB": usage.ru_maxrss / 1024,
        "test accuracy %": float(re.search(r"Test accuracy: ([\d.]+)%", text).group(1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["with", "without"], help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="more fit arguments, after --")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.extra)
        return
    from benchmarks.hardware import describe

    print(describe())
    cache = tempfile.mkdtemp(prefix="mnist-cache-")
    fit = ["fit", f"--data.data_dir={Path(args.data_dir).resolve()}", f"--data.cache_dir={cache}",
           "--trainer.enable_progress_bar=false", *args.extra]  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
    for _ in range(args.repeats):
        for setting in runs:
            runs[setting].append(run(setting, fit))
    print(f"\n{'default fit (medians of ' + str(args.repeats) + ')':28} {'freed memory kept':>18} {'glibc as it is':>15}")
    medians = {key: [statistics.median(r[key] for r in runs[s]) for s in runs] for key in runs["with"][0] if key != "weights"}
    for key, (kept, plain) in medians.items():
        digits = 0 if key == "page faults" else 2
        print(f"{key:28} {kept:18,.{digits}f} {plain:15,.{digits}f}")
    kept, plain = medians["training s"]
    print(f"training time without the setting / with it: {plain / kept:.2f}")
    digests = {r["weights"] for setting in runs for r in runs[setting]}
    print(f"trained weights: {'the same, bit for bit, in every run' if len(digests) == 1 else 'different: ' + ', '.join(digests)}")


if __name__ == "__main__":
    main()
