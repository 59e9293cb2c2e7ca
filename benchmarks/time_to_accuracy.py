"""Time to accuracy: validation accuracy against training seconds, per config, in one plot; and the
dataset x model table (test accuracy, training seconds, parameters, machine load) of docs/models.md.

Each run is a real `python -m digits_lightning fit --config X [--data.dataset D]` in a fresh folder,
in `<out>/<config>-run/` (its checkpoints and logs stay there), with one more callback (`Clock`, below) that writes, at every validation, the seconds the fit loop
has run (training and validation, as "Trained N epochs in X s" counts them), the validation
accuracy and the 1-minute load average of the machine; and after the final test (of the checkpoint
chosen on validation), the test accuracy and the parameter count. The test split is only reported.

    python benchmarks/time_to_accuracy.py run --data_dir ../shared/datasets/mnist \\
        --configs configs/dense.yaml configs/cnn.yaml configs/cnn_best.yaml configs/resnet.yaml --out runs/mnist
    python benchmarks/time_to_accuracy.py run --data_dir /usr/share/datasets/fashion-mnist \\
        --configs configs/cnn.yaml configs/resnet.yaml --dataset fashion --out runs/fashion
    python benchmarks/time_to_accuracy.py plot runs/mnist/*.json --out docs/time_to_accuracy.png
    python benchmarks/time_to_accuracy.py table runs/mnist/*.json runs/fashion/*.json
"""

from __future__ import annotations

import argparse
import json
import re
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
CLOCK_FILE = "DIGITS_CLOCK_FILE"  # where `Clock` writes its record (an environment variable)


def _load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Clock(Callback):
    """Records (fit-loop seconds, val_acc, load) at each validation, then the test accuracy."""

    def __init__(self) -> None:
        self.record: dict = {"curve": []}
        self._start: float | None = None

    def _write(self) -> None:
        path = os.environ.get(CLOCK_FILE)
        if path:
            Path(path).write_text(json.dumps(self.record, indent=1))

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self.record["params"] = sum(p.numel() for p in pl_module.parameters())
        self.record["model"] = type(pl_module).__name__
        self.record["classes"] = list(pl_module.hparams.class_names)

    # (the `_end` hooks: Lightning calls the module's `on_*_epoch_end`, which logs, after the callbacks')
    def on_validation_end(self, trainer, pl_module) -> None:
        if self._start is None or trainer.sanity_checking:
            return
        acc = trainer.callback_metrics.get("val_acc")
        self.record["curve"].append(
            {"epoch": trainer.current_epoch + 1, "seconds": time.perf_counter() - self._start,
             "val_acc": float(acc) if acc is not None else None, "load": _load()}
        )  # fmt: skip
        self._write()

    def on_train_end(self, trainer, pl_module) -> None:
        if self._start is not None:
            self.record["train_seconds"] = time.perf_counter() - self._start

    def on_test_end(self, trainer, pl_module) -> None:
        acc = trainer.callback_metrics.get("test_acc")
        self.record["test_acc"] = float(acc) if acc is not None else None
        self._write()


def run(args) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.hardware import describe

    print(describe())
    print(f"each fit runs with torch threads {args.threads or 'default'}" + (" (OMP_NUM_THREADS)" if args.threads else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="digits-cache-")
    for config in args.configs:
        name = Path(config).stem + (f"-{args.dataset}" if args.dataset else "")
        record = out / f"{name}.json"
        command = [
            sys.executable, "-m", "digits_lightning", "fit", "--config", str(Path(config).resolve()),
            f"--data.data_dir={Path(args.data_dir).resolve()}", f"--data.cache_dir={cache}",
            "--trainer.enable_progress_bar=false", "--trainer.callbacks+=benchmarks.time_to_accuracy.Clock",
            "--checkpoint.save_top_k=3",  # the three best, for a checkpoint ensemble (benchmarks/tta.py)
            *([f"--data.dataset={args.dataset}"] if args.dataset else []), *_absolute_configs(args.extra),
        ]  # fmt: skip
        cwd = (out / f"{name}-run").resolve()  # its checkpoints and logs stay, for benchmarks/tta.py
        shutil.rmtree(cwd, ignore_errors=True)
        cwd.mkdir()
        env = {**os.environ, CLOCK_FILE: str(record.resolve()), "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        if args.threads:  # torch's intra-op threads (OpenMP): on a CPU other jobs share, 2 threads thrash
            env["OMP_NUM_THREADS"] = str(args.threads)
        load = _load()
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        data = json.loads(record.read_text())
        data.update(
            config=Path(config).name, dataset=args.dataset or "mnist", load_before=load, threads=args.threads or "default",
            command=" ".join(command[1:]),
        )  # fmt: skip
        record.write_text(json.dumps(data, indent=1))
        best = max(data["curve"], key=lambda p: p["val_acc"])
        print(
            f"{name}: {data['params']:,} parameters, trained {data['train_seconds']:.0f} s, best val_acc"
            f" {best['val_acc']:.2%} (epoch {best['epoch']}), test_acc {data['test_acc']:.2%},"
            f" load {load:.1f} before, {_mean_load(data):.1f} during"
        )


def _mean_load(data: dict) -> float:
    loads = [p["load"] for p in data["curve"]]
    return sum(loads) / len(loads)


def _seed(data: dict) -> str:
    found = re.search(r"--seed_everything[= ](\d+)", data.get("command", ""))
    return found.group(1) if found else "42"


def _absolute_configs(extra: list[str]) -> list[str]:
    """`--config FILE` among the extra arguments, as an absolute path: each fit runs in its own folder."""
    out = list(extra)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = f"--config={Path(arg.split('=', 1)[1]).resolve()}"
        elif i > 0 and out[i - 1] == "--config":
            out[i] = str(Path(arg).resolve())
    return out


def _config(data: dict) -> str:
    """The config file and any model or callback settings given beside it on the command line
    (not the `Clock` this script adds)."""
    command = data.get("command", "")
    settings = re.findall(r"--model\.[\w.]+=\S+", command)
    settings += [s for s in re.findall(r"--trainer\.callbacks\S*", command) if not s.endswith(".Clock")]
    return " ".join([f"`{data['config']}`", *(f"`{s.replace('lightning.pytorch.callbacks.', '')}`" for s in settings)])


def _read(paths: list[str]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _read(args.records)
    fig, ax = plt.subplots(figsize=(8, 5))
    for data in records:
        xs = [p["seconds"] for p in data["curve"]]
        ys = [100 * p["val_acc"] for p in data["curve"]]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{data['config']} ({data['params'] / 1e3:.0f}k params, test {data['test_acc']:.2%})")
    ax.set_xscale("log")
    ax.set_xlabel("training seconds (fit loop, 2-core CPU shared with other jobs: see the load in docs/models.md)")
    ax.set_ylabel("validation accuracy (%)")
    if args.ylim:
        ax.set_ylim(*args.ylim)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(args.title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


def table(args) -> None:
    print("| dataset | config | seed | model | parameters | epochs | best val acc | test acc | training s | torch threads | load (1-min avg) during |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for data in _read(args.records):
        best = max(data["curve"], key=lambda p: p["val_acc"])
        loads = [p["load"] for p in data["curve"]]
        print(
            f"| {data['dataset']} | {_config(data)} | {_seed(data)} | {data['model']} | {data['params']:,} | {len(data['curve'])} |"
            f" {best['val_acc']:.2%} (epoch {best['epoch']}) | {data['test_acc']:.2%} | {data['train_seconds']:.0f} |"
            f" {data.get('threads', 'default')} |"
            f" {min(loads):.1f}-{max(loads):.1f} (mean {_mean_load(data):.1f}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--dataset", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the fit (default: torch's own)")
    p.add_argument("extra", nargs="*", help="more fit arguments, after --")
    p = sub.add_parser("plot")
    p.add_argument("records", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="MNIST: validation accuracy against training time")
    p.add_argument("--ylim", type=float, nargs=2, default=None)
    p = sub.add_parser("table")
    p.add_argument("records", nargs="+")
    args = parser.parse_args()
    {"run": run, "plot": plot, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
