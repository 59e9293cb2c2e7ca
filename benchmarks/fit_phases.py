"""Where the time of one `fit` goes, part by part: imports, the CLI, data, checkpoints, pictures,
event files, the final test, training itself, and the rest.

Each repeat runs a real `python -m digits_lightning fit ...` in a fresh process (this script
re-invoked with `--child`) whose functions of interest are wrapped by stopwatches from the outside;
the package itself is not changed. Also prints the start-up figures: a bare
`import torch, lightning`, `python -m digits_lightning --help`, and a one-image `predict`.

    python benchmarks/fit_phases.py --data_dir ../shared/datasets/mnist
    python benchmarks/fit_phases.py --data_dir ../shared/datasets/mnist -- --trainer.precision 32-true
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# part -> (module, attribute path) of the functions whose time is that part's
WATCHED = {
    "data: checks and extraction": ("digits_lightning.archives", "ArchiveFolder.prepare"),
    "data: splits into memory": ("digits_lightning.data", "MNISTDataModule.setup"),
    "checkpoints: saving": ("digits_lightning.checkpoints", "AtomicCheckpointIO.save_checkpoint"),
    "checkpoints: reading": ("digits_lightning.checkpoints", "read_checkpoint"),
    "pictures": ("digits_lightning.callbacks", "_Pictures._publish"),
    "training samples for the picture": ("digits_lightning.data", "MNISTDataModule.training_samples"),
    "event files": ("lightning.pytorch.loggers.tensorboard", "TensorBoardLogger.log_metrics"),
    "event files: hyperparameters": ("lightning.pytorch.loggers.tensorboard", "TensorBoardLogger.log_hyperparams"),
    "event files: closing": ("lightning.pytorch.loggers.tensorboard", "TensorBoardLogger.finalize"),
    "sanity check": ("lightning.pytorch.trainer.trainer", "Trainer._run_sanity_check"),
    "final test": ("lightning.pytorch.trainer.trainer", "Trainer.test"),
    "fit loop": ("lightning.pytorch.loops.fit_loop", "_FitLoop.run"),
}
def child(fit_args: list[str]) -> None:
    """Run one fit with the stopwatches on; print the parts as JSON on the last line."""
    import importlib

    from digits_lightning.collector import libraries_loading

    with libraries_loading():  # as `python -m digits_lightning` loads them
        import lightning  # noqa: F401
        import torch  # noqa: F401

        imported = time.perf_counter() - START
        for module, _ in WATCHED.values():
            importlib.import_module(module)
        from digits_lightning.cli import main
    spent: dict[str, float] = defaultdict(float)
    stack: list[list[float]] = []  # per open call: [start, seconds spent in watched calls inside it]

    def watch(part: str, owner, name: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            stack.append([time.perf_counter(), 0.0])
            try:
                return original(*args, **kwargs)
            finally:
                began, inner = stack.pop()
                elapsed = time.perf_counter() - began
                spent[part] += elapsed - inner  # each second counts once, in the innermost part
                if stack:
                    stack[-1][1] += elapsed

        setattr(owner, name, timed)

    for part, (module, path) in WATCHED.items():
        owner = importlib.import_module(module)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        watch(part, owner, name)

    imported_ours = time.perf_counter() - START - imported
    main(fit_args)
    print(json.dumps({"imports: torch, lightning": imported, "imports: ours": imported_ours, **spent}))
    from digits_lightning.__main__ import exit_now

    exit_now(0)  # as `python -m digits_lightning` ends


def run(command: list[str], cwd: str) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done.stdout, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="more fit arguments, after --")
    args = parser.parse_args()
    if args.child:
        child(args.extra)
        return
    from benchmarks.hardware import describe

    print(describe())
    cache = tempfile.mkdtemp(prefix="mnist-cache-")
    fit = ["fit", f"--data.data_dir={Path(args.data_dir).resolve()}", f"--data.cache_dir={cache}",
           "--trainer.enable_progress_bar=false", *args.extra]  # fmt: skip
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cwd:
            out, wall = run([sys.executable, str(Path(__file__).resolve()), "--child", "--", *fit], cwd)
        parts = json.loads(out.strip().splitlines()[-1])
        parts["whole process"] = wall
        runs.append(parts)
    print_table(runs)
    print_start_up(args.data_dir, cache)


def print_table(runs: list[dict[str, float]]) -> None:
    def median(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in runs)

    rows = {part: median(part) for part in runs[0] if part != "whole process"}
    rows["fit loop, without the parts above"] = rows.pop("fit loop")
    rows["the rest: interpreter, CLI, trainer set-up, teardown"] = median("whole process") - sum(rows.values())
    print(f"\n{'part of one fit (medians of ' + str(len(runs)) + ' runs)':58} seconds")
    for part, seconds in rows.items():
        print(f"  {part:56} {seconds:6.2f}")
    print(f"  {'whole process':56} {median('whole process'):6.2f}")
    around = median("whole process") - rows["imports: torch, lightning"] - rows["fit loop, without the parts above"]
    print(f"around training (all but importing torch and Lightning and the fit loop): {around:.2f} s (target <= 3)")


def print_start_up(data_dir: str, cache: str) -> None:
    """The start-up figures: bare imports, --help, a one-image predict (trains a 1-batch model first)."""
    with tempfile.TemporaryDirectory() as cwd:
        bare = [run([sys.executable, "-c", "import torch, lightning"], cwd)[1] for _ in range(3)]
        paused = "from digits_lightning.collector import libraries_loading\nwith libraries_loading(): import torch, lightning"
        bare_paused = [run([sys.executable, "-c", paused], cwd)[1] for _ in range(3)]
        helps = [run([sys.executable, "-m", "digits_lightning", "--help"], cwd)[1] for _ in range(3)]
        run([sys.executable, "-m", "digits_lightning", "fit", f"--data.data_dir={Path(data_dir).resolve()}",
             f"--data.cache_dir={cache}", "--trainer.max_steps=1", "--test_after_fit=false",
             "--trainer.enable_progress_bar=false", "--trainer.logger=false"], cwd)  # fmt: skip
        from PIL import Image

        image = Image.new("L", (60, 60), 255)
        image.paste(0, (27, 8, 33, 52))  # a "1"
        image.save(Path(cwd) / "one.png")
        predicts = [run([sys.executable, "-m", "digits_lightning", "predict", "--data.predict_path=one.png",
                         "--trainer.enable_progress_bar=false", "--prediction.overwrite=true",
                         "--prediction.output=p.csv"], cwd)[1] for _ in range(3)]  # fmt: skip
    print(f"import torch, lightning:        {statistics.median(bare):.2f} s (runs: {', '.join(f'{t:.2f}' for t in bare)})")
    print(f"the same, collector paused:     {statistics.median(bare_paused):.2f} s (runs: {', '.join(f'{t:.2f}' for t in bare_paused)})")
    print(f"python -m digits_lightning --help: {statistics.median(helps):.2f} s (runs: {', '.join(f'{t:.2f}' for t in helps)})")
    print(f"one-image predict, whole process: {statistics.median(predicts):.2f} s (runs: {', '.join(f'{t:.2f}' for t in predicts)})")


if __name__ == "__main__":
    main()
