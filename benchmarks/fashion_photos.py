"""Fashion-MNIST test images as a user's photos: does `predict` read them as the model reads the originals?

Writes the first --count test images as PNGs the way a user's photo of a product looks (dark on
white paper, 4x larger), runs the real `python -m digits_lightning predict` on the folder with the
checkpoint, and compares the CSV's `label` column with the true class; beside it, the same model
on the original 28x28 test images.

    python benchmarks/fashion_photos.py --ckpt runs/fashion/resnet-fashion-run/checkpoints/resnet/epoch=19-*.ckpt
"""

from __future__ import annotations

import argparse
import csv
import gzip
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digits_lightning.checkpoints import load_classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    folder = Path(args.data_dir)
    images = np.frombuffer(gzip.open(folder / "t10k-images-idx3-ubyte.gz").read()[16:], np.uint8).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.open(folder / "t10k-labels-idx1-ubyte.gz").read()[8:], np.uint8)
    images, labels = images[: args.count], labels[: args.count]
    model = load_classifier(args.ckpt)
    names = list(model.hparams.class_names)
    with torch.no_grad():
        originals = model.evaluate(torch.from_numpy(images.copy()).unsqueeze(1).float() / 255).argmax(1).numpy()
    with tempfile.TemporaryDirectory() as work:
        photos = Path(work) / "photos"
        photos.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(255 - image).resize((112, 112), Image.Resampling.BILINEAR).save(photos / f"{i:05d}.png")
        subprocess.run(
            [sys.executable, "-m", "digits_lightning", "predict", f"--ckpt_path={Path(args.ckpt).resolve()}",
             f"--data.predict_path={photos}", "--trainer.enable_progress_bar=false", "--prediction.output=out.csv"],
            cwd=work, check=True, capture_output=True,
        )  # fmt: skip
        with open(Path(work) / "out.csv", newline="") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    right = sum(row["label"] == names[label] for row, label in zip(rows, labels))
    failed = sum(bool(row["error"]) for row in rows)
    print(f"{Path(args.ckpt).name}, convention {model.hparams.get('convention')}, tta {model.hparams.get('tta')}")
    print(f"the {args.count} original test images: {(originals == labels).mean():.1%} right")
    print(f"the same as photos through predict: {right / len(rows):.1%} right ({failed} failed)")


if __name__ == "__main__":
    main()
