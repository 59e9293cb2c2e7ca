"""Prediction on a folder of user-like image files: throughput and accuracy against their labels.

Writes N images made from the MNIST test set the way people's files look (upscaled, dark ink on
light paper of varying brightness, off-centre on a larger canvas, a little noise; mostly grayscale
PNG, some RGB, some RGBA with a transparent background, some JPEG), then runs the real
`python -m digits_lightning predict` on the folder and prints:
  - images per second end to end (the whole process, start-up included) and with start-up excluded
    (the prediction loop alone, as the command reports it);
  - the accuracy of the predicted digits against the labels, beside the same model's accuracy on
    the raw MNIST tensors of the same digits (target: within 0.3 points), and the accuracy of the
    naive recipe of the reference systems (grayscale, invert, resize to 28x28) on the same files.

    python benchmarks/predict_folder.py --data_dir ../shared/datasets/mnist
    python benchmarks/predict_folder.py --data_dir ../shared/datasets/mnist --ckpt_paths a.ckpt b.ckpt

Without --ckpt_paths it first trains the default CNN (`fit` with no config) in a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.hardware import describe  # noqa: E402
from digits_lightning.checkpoints import load_classifier  # noqa: E402
from digits_lightning.data import MNISTDataModule  # noqa: E402


def render(digit: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One MNIST digit (white on black, 28x28) as a user's file might hold it; returns (image, suffix)."""
    side = int(rng.integers(56, 141))
    big = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    paper, ink = int(rng.integers(190, 256)), int(rng.integers(0, 70))
    gray = np.asarray(big, dtype=np.float32) / 255
    canvas_side = int(side * rng.uniform(1.2, 1.8))
    page = np.full((canvas_side, canvas_side), float(paper), np.float32)
    top, left = (int(rng.integers(0, canvas_side - side + 1)) for _ in range(2))
    page[top : top + side, left : left + side] = paper + (ink - paper) * gray
    page += rng.normal(0, 4, page.shape)
    page = np.clip(page, 0, 255).astype(np.uint8)
    kind = rng.random()
    if kind < 0.6:
        return Image.fromarray(page), ".png"
    if kind < 0.75:
        tint = np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.8, 1.0)])
        return Image.fromarray((page[..., None] * tint).astype(np.uint8), "RGB"), ".png"
    if kind < 0.85:  # ink on a transparent background, as drawing programs export it
        alpha = np.clip((paper - page.astype(np.float32)) / max(paper - ink, 1) * 255, 0, 255).astype(np.uint8)
        rgba = np.stack([np.full_like(page, ink)] * 3 + [alpha], axis=-1)
        return Image.fromarray(rgba, "RGBA"), ".png"
    return Image.fromarray(page).convert("RGB"), ".jpg"


def write_folder(folder: Path, images: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (digit, label) in enumerate(zip(images.numpy(), labels.tolist())):
        image, suffix = render(digit, rng)
        image.save(folder / f"{i:05d}_{label}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))


def train_default(data_dir: str, cache_dir: str, workdir: Path) -> Path:
    data_dir = str(Path(data_dir).resolve())  # the fit runs in `workdir`
    print("training the default CNN (fit with no config) for the benchmark ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "digits_lightning", "fit", f"--data.data_dir={data_dir}", f"--data.cache_dir={cache_dir}",
         "--trainer.enable_progress_bar=false", "--test_after_fit=false", ],
        cwd=workdir, check=True, capture_output=True,
    )  # fmt: skip
    return next((workdir / "checkpoints" / "cnn").glob("epoch=*.ckpt"))


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Of uint8 `[N, 28, 28]` digits, as `predict` computes them (with the checkpoint's test-time
    augmentation, if any); the model takes them scaled to [0, 1]."""
    predicted = torch.cat([model.evaluate(images[i : i + 1000].unsqueeze(1) / 255).argmax(1) for i in range(0, len(images), 1000)])
    return 100 * float((predicted == labels).float().mean())


def naive(path: Path) -> np.ndarray:
    """The reference systems' recipe: grayscale, invert, resize to 28x28."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.invert(image.convert("L")).resize((28, 28)))


def predict(ckpt: Path, folder: Path, out: Path) -> tuple[float, float, str]:
    """Whole-process seconds, the prediction loop's own seconds, and the printed output."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "digits_lightning", "predict", f"--ckpt_path={ckpt}", f"--data.predict_path={folder}",
         f"--prediction.output={out}", "--prediction.overwrite=true", "--trainer.enable_progress_bar=false",
         ],
        cwd=out.parent, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"predict failed:\n{done.stderr[-3000:]}")
    loop = float(re.search(r"images in ([\d.]+) s", done.stdout).group(1))
    return wall, loop, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--ckpt_paths", nargs="*", default=None, help="checkpoints to compare (default: train one)")
    parser.add_argument("--n", type=int, default=2000, help="how many images to write")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())  # the training below runs in another folder
    print(describe())
    work = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    cache = args.cache_dir or str(work / "cache")
    dm = MNISTDataModule(args.data_dir, cache_dir=cache, download=False)
    dm.prepare_data()
    dm.setup("test")
    order = torch.randperm(len(dm.test_set), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    images, labels = dm.test_set.images[order], dm.test_set.labels[order]
    folder = work / "images"
    write_folder(folder, images, labels, args.seed)
    files = sorted(folder.iterdir())
    print(f"wrote {len(files):,} user-like files into {folder}")
    ckpts = [Path(c).resolve() for c in args.ckpt_paths] if args.ckpt_paths else [train_default(args.data_dir, cache, work)]
    for ckpt in ckpts:
        model = load_classifier(ckpt)
        walls, loops = [], []
        for _ in range(args.repeats):
            wall, loop, _ = predict(ckpt, folder, work / "predictions.csv")
            walls.append(wall)
            loops.append(loop)
        with open(work / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        right = sum(r["digit"] == Path(r["path"]).stem.split("_")[1] for r in rows)
        failed = sum(bool(r["error"]) for r in rows)
        files_acc = 100 * right / len(rows)
        raw_acc = accuracy(model, images, labels)
        all_acc = accuracy(model, dm.test_set.images, dm.test_set.labels)
        naive_images = torch.from_numpy(np.stack([naive(f) for f in files]))
        naive_labels = torch.tensor([int(f.stem.split("_")[1]) for f in files])
        naive_acc = accuracy(model, naive_images, naive_labels)
        n = len(rows)
        print(f"checkpoint: {ckpt.name} ({type(model).__name__})")
        print(f"  throughput end to end     {n / statistics.median(walls):7.0f} images/s (runs: {', '.join(f'{w:.1f}' for w in walls)} s for {n:,} images; target >= 400)")
        print(f"  throughput, start-up out  {n / statistics.median(loops):7.0f} images/s (runs: {', '.join(f'{t:.2f}' for t in loops)} s; target >= 1500)")
        print(f"  accuracy on the files     {files_acc:6.2f}% ({failed} failed)")
        print(f"  accuracy on raw tensors   {raw_acc:6.2f}% (the same {n:,} digits; {all_acc:.2f}% on all 10,000)")
        print(f"  files minus raw           {files_acc - raw_acc:+6.2f} points (target within 0.3)")
        print(f"  naive resize on the files {naive_acc:6.2f}% (grayscale, invert, resize to 28x28)")


if __name__ == "__main__":
    main()
