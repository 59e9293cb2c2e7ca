"""The pictures and example outputs of README.md and docs/, made by the real commands.

Runs `fit` (the default CNN) and `fit --config configs/dense.yaml` on MNIST in a temporary folder,
copies their pictures into docs/, then runs `predict --prediction.sheet true` on a folder of
user-like files made from MNIST test digits (and three bad files) and copies the contact sheet.
It prints what each command printed, for the README's example outputs.

    python benchmarks/readme_pictures.py --data_dir ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.hardware import describe  # noqa: E402
from benchmarks.predict_folder import render  # noqa: E402
from digits_lightning.archives import ArchiveFolder, default_cache_dir  # noqa: E402

DOCS = ROOT / "docs"


def cli(cwd: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "digits_lightning", *args, "--trainer.enable_progress_bar=false"],
                          cwd=cwd, capture_output=True, text=True)  # fmt: skip
    if done.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def showcase(folder: Path, digits: np.ndarray) -> None:
    """User-like files of the first test digits, each in another guise, and three bad files."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, digit in enumerate(digits[:6]):
        image, suffix = render(digit, rng)
        image.save(folder / f"scan-{i}{suffix}")
    big = np.asarray(Image.fromarray(digits[6]).resize((240, 240), Image.Resampling.BICUBIC), np.float32) / 255
    light = np.linspace(0.45, 1.0, 240)[None, :] * 255  # a photo lit from one side
    Image.fromarray(np.clip(light * (1 - 0.8 * big), 0, 255).astype(np.uint8)).save(folder / "photo-uneven-light.jpg")
    chalk = 40 + 180 * big + rng.normal(0, 8, big.shape)  # white chalk on a dark board
    Image.fromarray(np.clip(chalk, 0, 255).astype(np.uint8)).save(folder / "blackboard.png")
    ruled = Image.fromarray(np.clip(255 * (1 - 0.9 * big), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(ruled)
    for y in range(20, 240, 30):
        draw.line([(0, y), (240, y)], fill=170, width=2)  # ruled paper
    ruled.save(folder / "ruled-paper.png")
    rgba = np.zeros((240, 240, 4), np.uint8)
    rgba[..., 3] = (255 * np.asarray(Image.fromarray(digits[7]).resize((240, 240)), np.float32) / 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "tablet-export.png")  # ink on a transparent background
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image\n")
    data = (folder / "scan-0.png").read_bytes()
    (folder / "cut-off.png").write_bytes(data[: len(data) // 3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    args = parser.parse_args()
    print(describe())
    data = [f"--data.data_dir={Path(args.data_dir).resolve()}"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out = cli(work, "fit", *data)
        print("$ python -m digits_lightning fit\n" + out)
        run = work / "lightning_logs" / "cnn" / "version_0"
        for name in ("samples", "learning_curves", "confusion_matrix", "misclassified"):
            shutil.copy(run / f"{name}.png", DOCS / f"{name}.png")
        out = cli(work, "fit", "--config", str(ROOT / "configs" / "dense.yaml"), *data)
        print("$ python -m digits_lightning fit --config configs/dense.yaml\n" + out)
        shutil.copy(work / "lightning_logs" / "dense" / "version_0" / "learning_curves.png", DOCS / "learning_curves_dense.png")
        files = ArchiveFolder(Path(args.data_dir), default_cache_dir(), download=False)
        files.prepare()
        digits, _ = files.load(train=False)
        showcase(work / "my_digits", digits.numpy())
        out = cli(work, "predict", "--data.predict_path=my_digits", "--prediction.sheet=true")
        print("$ python -m digits_lightning predict --data.predict_path my_digits --prediction.sheet true\n" + out)
        shutil.copy(work / "predictions.png", DOCS / "predictions.png")
    print(f"pictures written into {DOCS}")


if __name__ == "__main__":
    main()
