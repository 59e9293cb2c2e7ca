"""One prepared run of the GPU figures, through the real CLI: a log and a JSON of figures.

    python benchmarks/gpu_check.py --data_dir DIR --out OUT            # on the GPU machine
    python benchmarks/gpu_check.py --data_dir DIR --out OUT --smoke    # a few batches each, on any machine

Figures (each fit a fresh `python -m digits_lightning fit` process in its own folder):
  - the default CNN: training seconds and test accuracy (target <= 2 s to >= 99.0%), in the
    precision fit chooses, then float32, NCHW instead of channels_last, and `--model.compile true`,
    each as a ratio of training time against the default, in this one run;
  - the strongest config (configs/resnet.yaml where it exists, else configs/cnn_best.yaml): test
    accuracy and training seconds (target >= 99.6% within 30 s of training);
  - configs/dense.yaml;
  - prediction of 2,000 user-like files with the model on the GPU (benchmarks/predict_folder.py);
  - the CNN's Lightning-versus-plain-loop ratio on the GPU (benchmarks/lightning_overhead.py).
benchmarks/gpu_check.sh wraps it for a bare machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2"]


class Log:
    def __init__(self, path: Path) -> None:
        self.file = open(path, "w")

    def __call__(self, text: str) -> None:
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def versions() -> dict:
    import lightning
    import torch

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True) if _has("nvidia-smi") else None  # fmt: skip
    return {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "nvidia-smi": smi.stdout.strip() if smi and smi.returncode == 0 else "",
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "lightning": lightning.__version__, "python": platform.python_version(),
    }  # fmt: skip


def _has(program: str) -> bool:
    from shutil import which

    return which(program) is not None


def fit(log: Log, name: str, data_dir: str, *extra: str, smoke: bool) -> dict:
    """One real fit in a fresh folder; its training seconds, test accuracy, whole-process seconds
    and best checkpoint (kept in the folder, which outlives the run)."""
    folder = Path(tempfile.mkdtemp(prefix=f"gpu-{name}-"))
    command = [sys.executable, "-m", "digits_lightning", "fit", f"--data.data_dir={data_dir}",
               "--trainer.enable_progress_bar=false", *extra, *(SMOKE if smoke else [])]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - start
    out = done.stdout + done.stderr
    if done.returncode != 0:
        log(f"{name}: FAILED ({done.returncode})\n{out[-4000:]}")
        return {"name": name, "failed": True, "output": out[-4000:]}
    trained = float(re.search(r"Trained \d+ epochs? in ([\d.]+) s", out).group(1))
    acc = float(re.search(r"Test accuracy: ([\d.]+)%", out).group(1))
    precision = re.search(r"Using (bfloat16|16bit) .*", out)
    best = next(iter(sorted(folder.glob("checkpoints/*/epoch=*.ckpt"))), None)
    result = {"name": name, "args": list(extra), "train_s": trained, "test_acc": acc, "process_s": round(wall, 2),
              "precision_line": precision.group(0) if precision else "float32", "ckpt": str(best)}  # fmt: skip
    log(f"{name:<22} training {trained:7.2f} s  test {acc:6.2f}%  whole process {wall:6.1f} s  {' '.join(extra)}")
    return result


def _env() -> dict:
    import os

    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def script(log: Log, name: str, *command: str) -> str:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, env=_env())
    log(f"--- {name} ({time.perf_counter() - start:.0f} s, exit {done.returncode})\n{done.stdout}{done.stderr[-2000:] if done.returncode else ''}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="a folder holding the four MNIST archives")
    parser.add_argument("--out", default="gpu_check_out")
    parser.add_argument("--smoke", action="store_true", help="a few batches per run: proves the script, measures nothing")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu_check.log")
    data_dir = str(Path(args.data_dir).resolve())
    figures: dict = {"versions": versions(), "smoke": args.smoke, "runs": []}
    log(json.dumps(figures["versions"]))
    started = time.perf_counter()

    def run(name: str, *extra: str) -> dict:
        result = fit(log, name, data_dir, *extra, smoke=args.smoke)
        figures["runs"].append(result)
        return result

    # The default CNN first twice (the first run also warms the CUDA and cuDNN caches), then the switches.
    run("cnn-warm-up")
    default = run("cnn-default")
    switches = {
        "float32": run("cnn-float32", "--trainer.precision=32-true"),
        "nchw": run("cnn-nchw", "--model.channels_last=false"),
        "compile": run("cnn-compile", "--model.compile=true"),
    }
    ratios = {}
    for switch, result in switches.items():
        if not result.get("failed") and not default.get("failed"):
            ratios[f"{switch}/default training time"] = round(result["train_s"] / default["train_s"], 3)
    figures["ratios"] = ratios
    log(f"ratios against the default CNN: {ratios}")
    strongest = ROOT / "configs" / ("resnet.yaml" if (ROOT / "configs" / "resnet.yaml").exists() else "cnn_best.yaml")
    run(f"strongest ({strongest.name})", f"--config={strongest}")
    run("dense", f"--config={ROOT / 'configs' / 'dense.yaml'}")

    ckpt = default.get("ckpt")
    if ckpt and ckpt != "None":
        n, repeats = ("100", "1") if args.smoke else ("2000", "3")
        figures["predict_folder"] = script(log, "predict_folder (model on the GPU)", "benchmarks/predict_folder.py",
                                           f"--data_dir={data_dir}", f"--ckpt_paths={ckpt}", f"--n={n}", f"--repeats={repeats}")  # fmt: skip
    device = "cuda" if figures["versions"]["gpu"] != "none" else "cpu"
    model = "dense" if args.smoke else "cnn"
    figures["lightning_overhead"] = script(log, f"lightning_overhead ({model}, {device})", "benchmarks/lightning_overhead.py",
                                           f"--data_dir={data_dir}", f"--model={model}", "--epochs=1",
                                           f"--device={device}", f"--repeats={1 if args.smoke else 3}", "--skip_per_sample")  # fmt: skip
    figures["seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu_check.json").write_text(json.dumps(figures, indent=2))
    log(f"done in {figures['seconds']} s: {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
