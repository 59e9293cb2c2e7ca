"""Field test: image files the way people's digits arrive, made from MNIST, one family per difficulty.

Each family holds real files (PNG or JPEG) made from MNIST digits the model never trained on:
`--split val` builds them from the validation split held out of training (split seed 0, 5,000
digits: what preprocessing choices are made on), `--split test` from the test set (what is
reported). Every file is scored three ways with the same checkpoint:

  ours   `digits_lightning.preprocess.preprocess_file`
  plain  the plain MNIST recipe (`plain_recipe` below, a few lines)
  naive  the reference systems' resize: grayscale, invert, resize to 28x28

    python benchmarks/field_corpus.py --data_dir ../shared/datasets/mnist --ckpt_path model.ckpt --split val
    python benchmarks/field_corpus.py --data_dir ../shared/datasets/mnist --split test   # trains a default CNN first

It prints the per-family accuracy table (docs/field_test.md holds the test split's) and the cost
of `preprocess_file` in ms per file on one core. The files are written once into --corpus_dir
and reused.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.hardware import describe  # noqa: E402
from digits_lightning import checkpoints  # noqa: E402
from digits_lightning.data import MNISTDataModule  # noqa: E402
from digits_lightning.preprocess import grayscale, load_image, preprocess_file  # noqa: E402

# -- the files -------------------------------------------------------------------------------------


def resized(values: np.ndarray, width: int, height: int, how=Image.Resampling.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(values.astype(np.float32), "F").resize((width, height), how), dtype=np.float32)


def ink_box(ink: np.ndarray, level: float = 0.1) -> np.ndarray:
    ys, xs = np.nonzero(ink > level)
    return ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def square(ink: np.ndarray) -> np.ndarray:
    """Padded with empty space to a square, the digit in the middle."""
    h, w = ink.shape
    side = max(h, w)
    out = np.zeros((side, side), np.float32)
    out[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = ink
    return out


def on_canvas(ink: np.ndarray, rng: np.random.Generator, room: tuple[float, float] = (1.2, 1.8)) -> np.ndarray:
    """`ink` (0-1) placed at a random spot of a larger empty canvas."""
    h, w = ink.shape
    ch, cw = int(h * rng.uniform(*room)), int(w * rng.uniform(*room))
    out = np.zeros((ch, cw), np.float32)
    top, left = int(rng.integers(0, ch - h + 1)), int(rng.integers(0, cw - w + 1))
    out[top : top + h, left : left + w] = ink
    return out


def print_on(ink: np.ndarray, paper: float, pen: float, rng: np.random.Generator, noise: float = 3.0) -> np.ndarray:
    """Gray levels 0-255 of ink strength `ink` (0-1) in a pen of level `pen` on paper of level `paper`."""
    page = paper + (pen - paper) * ink + rng.normal(0, noise, ink.shape)
    return np.clip(page, 0, 255).astype(np.uint8)


def noisy(levels: np.ndarray, rng: np.random.Generator, noise: float = 3.0) -> np.ndarray:
    return np.clip(levels + rng.normal(0, noise, levels.shape), 0, 255).astype(np.uint8)


def upscaled(digit: np.ndarray, rng: np.random.Generator, lo: int = 56, hi: int = 141) -> np.ndarray:
    side = int(rng.integers(lo, hi))
    return resized(digit / 255, side, side).clip(0, 1)


def bold_strokes(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit at three times MNIST's resolution, its strokes dilated by 1-3 px (1.3-1.8x
    MNIST's width), cropped to its ink."""
    big = resized(digit / 255, 84, 84).clip(0, 1)
    r = int(rng.integers(1, 4))
    big = np.asarray(Image.fromarray(big, "F").filter(ImageFilter.MaxFilter(2 * r + 1)))
    return ink_box(big, 0.3)


def bold(digit, rng):
    """A bold pen (`bold_strokes`), cropped tight."""
    box = bold_strokes(digit, rng)
    scale = rng.uniform(1.0, 3.0)
    box = resized(box, round(box.shape[1] * scale), round(box.shape[0] * scale)).clip(0, 1)
    return Image.fromarray(print_on(box, rng.uniform(200, 255), rng.uniform(0, 60), rng)), ".png"


def low_resolution(side: int):
    def render(digit, rng):
        """The digit's box, squared, reduced to side x side, then upscaled 4-12x with bilinear interpolation."""
        small = resized(square(ink_box(digit / 255)), side, side, Image.Resampling.BOX)
        k = int(rng.integers(4, 13))
        big = resized(small, side * k, side * k).clip(0, 1)
        return Image.fromarray(print_on(big, rng.uniform(210, 255), rng.uniform(0, 50), rng, 2)), ".png"

    render.__doc__ = f"Reduced to {side}x{side}, upscaled 4-12x (bilinear)."
    return render


def stretched(digit, rng):
    """Binarised and stretched to fill a 16x16 square, stored at 1-6x that size (nearest neighbour)."""
    small = resized(ink_box(digit / 255, 0.3), 16, 16) > 0.5
    k = int(rng.integers(1, 7))
    big = np.kron(small, np.ones((k, k), bool))
    image = Image.fromarray(np.where(big, 0, 255).astype(np.uint8))
    return (image.convert("1") if rng.random() < 0.5 else image), ".png"


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean image to lines one pixel wide."""
    m = np.pad(mask, 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            p = [np.roll(np.roll(m, -dy, 0), -dx, 1) for dy, dx in
                 ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))]  # fmt: skip
            neighbours = sum(p)
            transitions = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)) for i in range(8))
            if step == 0:
                cond = (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
            else:
                cond = (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
            remove = (m == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & cond
            if remove.any():
                m[remove] = 0
                changed = True
        if not changed:
            return m[1:-1, 1:-1].astype(bool)


def faint(digit, rng):
    """A 28x28 drawing with a thin (1 px) light-gray pen (15-105 gray levels) on white, as in a paint
    program: the digit's centre line, found at 4x the size (so that small loops survive thinning),
    drawn about a pixel wide, with an anti-aliasing brush or a hard one."""
    centre = skeleton(resized(digit / 255, 112, 112) > 0.5)
    wide = np.asarray(Image.fromarray(centre.astype(np.float32), "F").filter(ImageFilter.MaxFilter(3)))
    line = resized(wide, 28, 28, Image.Resampling.BOX)
    line = line / max(float(line.max()), 1e-6)
    if rng.random() < 0.5:  # a hard pen: each pixel inked or not
        line = (line > 0.35).astype(np.float32)
    line = np.roll(line, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), (0, 1))
    return Image.fromarray(print_on(line.clip(0, 1), 255, rng.uniform(150, 240), rng, 0)), ".png"


def lighting(digit, rng):
    """Dark ink on paper lit unevenly: a gradient across the sheet, and half of them a soft shadow."""
    page = on_canvas(upscaled(digit, rng, 60, 161), rng, (1.3, 2.2))
    h, w = page.shape
    reflect = 0.92 - (0.92 - rng.uniform(0.05, 0.25)) * page  # paper reflects most light, ink little
    ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    along = (np.cos(angle) * xs + np.sin(angle) * ys)
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    light = 1 - rng.uniform(0.25, 0.55) * along
    if rng.random() < 0.5:
        a2, cut = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.7)
        side = (np.cos(a2) * (xs - 0.5 * w / max(h, w)) + np.sin(a2) * (ys - 0.5 * h / max(h, w))) > cut - 0.5
        edge = ImageFilter.GaussianBlur(rng.uniform(2, 10))
        shade = np.asarray(Image.fromarray((255 * side).astype(np.uint8)).filter(edge), np.float32) / 255
        light = light * (1 - rng.uniform(0.3, 0.55) * shade)
    return Image.fromarray(noisy(255 * reflect * light, rng)), ".png"


def ruled(digit, rng):
    """Dark ink on ruled (lines) or squared (grid) paper."""
    ink = upscaled(digit, rng, 50, 131)
    page = on_canvas(ink, rng, (1.3, 2.0))
    h, w = page.shape
    gap = int(rng.integers(max(8, ink.shape[0] // 4), max(9, ink.shape[0] // 2)))
    width, level = int(rng.integers(1, 3)), rng.uniform(0.2, 0.5)
    lines = np.zeros_like(page)
    offset = int(rng.integers(0, gap))
    for y in range(offset, h, gap):
        lines[y : y + width] = level
    if rng.random() < 0.5:  # squared paper
        for x in range(int(rng.integers(0, gap)), w, gap):
            lines[:, x : x + width] = level
    pen = rng.uniform(0, 60) / 255
    paper = rng.uniform(225, 255) / 255
    gray = paper * (1 - lines)  # the rules are printed on the paper; the ink covers them
    gray = gray + (pen - gray) * page
    return Image.fromarray(noisy(255 * gray, rng, 2)), ".png"


def light_on_dark(digit, rng):
    """Light ink (chalk, a drawing app's white pen) on a dark background."""
    page = on_canvas(upscaled(digit, rng), rng)
    return Image.fromarray(print_on(page, rng.uniform(0, 80), rng.uniform(170, 255), rng, 5)), ".png"


def jpeg(digit, rng):
    """Dark ink on light paper, saved as JPEG at quality 60-90 (gray or colour)."""
    page = print_on(on_canvas(upscaled(digit, rng, 40, 141), rng), rng.uniform(200, 255), rng.uniform(0, 70), rng)
    image = Image.fromarray(page)
    buffer = io.BytesIO()
    (image.convert("RGB") if rng.random() < 0.5 else image).save(buffer, "JPEG", quality=int(rng.integers(60, 91)))
    return buffer.getvalue(), ".jpg"


def boxed(digit, rng):
    """Dark ink in the box of a form's cell: a rectangle (1-3 px) drawn around the digit, inset
    from the image's edge by 2-8 % (a crop with a margin); some digits touch it."""
    page = on_canvas(upscaled(digit, rng, 50, 121), rng, (1.3, 1.7))
    h, w = page.shape
    t, m = int(rng.integers(1, 4)), int(rng.uniform(0.02, 0.08) * min(h, w))
    box = np.zeros_like(page)
    box[m : m + t, m : w - m] = box[h - m - t : h - m, m : w - m] = 1
    box[m : h - m, m : m + t] = box[m : h - m, w - m - t : w - m] = 1
    return Image.fromarray(print_on(np.maximum(page, box), rng.uniform(200, 255), rng.uniform(0, 70), rng)), ".png"


def underlined(digit, rng):
    """Dark ink written on a line: a straight line (1-3 px) a little below the digit, running past
    it on both sides."""
    page = on_canvas(upscaled(digit, rng, 50, 121), rng, (1.3, 1.7))
    h, w = page.shape
    page = np.pad(page, ((0, h // 6), (0, 0)))
    bottom = int(np.flatnonzero(page.max(axis=1) > 0.1)[-1])
    t = int(rng.integers(1, 4))
    y = min(page.shape[0] - t, bottom + int(rng.integers(2, max(3, h // 10))))
    page[y : y + t, int(rng.uniform(0, 0.15) * w) : int(rng.uniform(0.85, 1.0) * w)] = 1
    return Image.fromarray(print_on(page, rng.uniform(200, 255), rng.uniform(0, 70), rng)), ".png"


def specks(digit, rng):
    """Dark ink on light paper with 1-3 dots (1-3 px across the radius) apart from the digit:
    dust on a scan, a pen's dots."""
    page = on_canvas(upscaled(digit, rng, 60, 121), rng, (1.6, 2.2))
    h, w = page.shape
    ys, xs = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 4))):
        r = int(rng.integers(1, 4))
        y, x = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
        page = np.maximum(page, ((ys - y) ** 2 + (xs - x) ** 2 <= r * r).astype(np.float32))
    return Image.fromarray(print_on(page, rng.uniform(200, 255), rng.uniform(0, 70), rng)), ".png"


def salt_and_pepper(digit, rng):
    """Dark ink on light paper with 0.1-1 % of the pixels gone black or white, as a fax or an old
    scan has them."""
    page = print_on(on_canvas(upscaled(digit, rng), rng), rng.uniform(200, 255), rng.uniform(0, 70), rng)
    hit, share = rng.random(page.shape), rng.uniform(0.001, 0.01)
    page[hit < share / 2], page[hit > 1 - share / 2] = 0, 255
    return Image.fromarray(page), ".png"


def grainy(digit, rng):
    """Dark ink on gray paper with heavy grain on every pixel (15-35 gray levels), as a photo taken
    in dim light has it."""
    page = on_canvas(upscaled(digit, rng), rng, (1.3, 2.0))
    return Image.fromarray(print_on(page, rng.uniform(150, 220), rng.uniform(20, 70), rng, rng.uniform(15, 35))), ".png"


def bold_in_shadow(digit, rng):
    """A bold pen (as `bold`) on a page 1.3-1.8x the digit, under a sharp-edged shadow (its edge
    blurred by 1-4 px, the paper there 35-55 % darker) whose edge runs through the digit, as
    a phone or a hand shades part of a photo of a marker digit."""
    big = bold_strokes(digit, rng)
    scale = rng.uniform(1.0, 2.5)
    box = resized(big, round(big.shape[1] * scale), round(big.shape[0] * scale)).clip(0, 1)
    page = on_canvas(box, rng, (1.3, 1.8))
    ys, xs = np.nonzero(page > 0.5)
    k = int(rng.integers(0, ys.size))  # the shadow's edge passes through a point of the ink
    angle = rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[0 : page.shape[0], 0 : page.shape[1]]
    side = np.cos(angle) * (cols - xs[k]) + np.sin(angle) * (rows - ys[k]) > 0
    edge = ImageFilter.GaussianBlur(rng.uniform(1, 4))
    shade = np.asarray(Image.fromarray((255 * side).astype(np.uint8)).filter(edge), np.float32) / 255
    reflect = 0.92 - (0.92 - rng.uniform(0.05, 0.25)) * page
    light = 1 - rng.uniform(0.35, 0.55) * shade
    return Image.fromarray(noisy(255 * reflect * light, rng)), ".png"


def screenshot(digit, rng):
    """A drawing app's dark canvas with a light pen, inside the app's light window, as a
    screenshot holds it: margins of 5-20 % of the canvas, none on some sides (a cut window)."""
    canvas = print_on(on_canvas(upscaled(digit, rng), rng, (1.3, 1.7)), rng.uniform(0, 60), rng.uniform(170, 255), rng, 2)
    h, w = canvas.shape
    top, right, bottom, left = (int(rng.uniform(0.05, 0.2) * max(h, w)) if rng.random() < 0.8 else 0 for _ in range(4))
    shot = np.full((h + top + bottom, w + left + right), int(rng.uniform(200, 250)), np.uint8)
    shot[top : top + h, left : left + w] = canvas
    return Image.fromarray(shot), ".png"


INKS = [(20, 40, 160), (30, 70, 200), (180, 20, 30), (20, 120, 40), (90, 30, 130), (40, 40, 40)]
PAPERS = [(255, 255, 255), (252, 248, 230), (240, 245, 255), (255, 250, 205)]


def coloured(digit, rng):
    """RGB: a coloured pen on white or tinted paper."""
    page = on_canvas(upscaled(digit, rng), rng)[..., None]
    ink = np.array(INKS[int(rng.integers(len(INKS)))], np.float32) * rng.uniform(0.7, 1.2)
    paper = np.array(PAPERS[int(rng.integers(len(PAPERS)))], np.float32)
    rgb = paper + (ink - paper) * page + rng.normal(0, 3, page.shape[:2])[..., None]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"), ".png"


FAMILIES = {
    "bold": bold,
    "low-res 16x16": low_resolution(16),
    "low-res 8x8": low_resolution(8),
    "stretched 16x16 binary": stretched,
    "faint thin 28x28": faint,
    "uneven lighting": lighting,
    "ruled/squared paper": ruled,
    "light on dark": light_on_dark,
    "JPEG q60-90": jpeg,
    "coloured ink (RGB)": coloured,
    "box around it": boxed,
    "underlined": underlined,
    "specks": specks,
    "dark canvas in a light window": screenshot,
    "salt-and-pepper noise": salt_and_pepper,
    "grainy photo": grainy,
    "bold in sharp shadow": bold_in_shadow,
}
SLUG = {name: "".join(c if c.isalnum() else "_" for c in name) for name in FAMILIES}


def build(folder: Path, images: np.ndarray, labels: np.ndarray, per_family: int, seed: int) -> dict[str, list[Path]]:
    """The corpus in `folder/<family>/`; each family gets its own digits (consecutive blocks of a
    shuffle; the families past what the split holds, blocks of another shuffle)."""
    if per_family > len(labels):
        raise SystemExit(f"--per_family {per_family} is more than the {len(labels)} digits")
    blocks = len(labels) // per_family
    files = {}
    for f, (name, render) in enumerate(FAMILIES.items()):
        cycle, slot = divmod(f, blocks)
        order = np.random.default_rng(seed if cycle == 0 else [seed, 1000 + cycle]).permutation(len(labels))
        sub = folder / SLUG[name]
        done = sub / ".complete"
        if not done.exists():
            sub.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, f])
            for i in order[slot * per_family : (slot + 1) * per_family]:
                image, suffix = render(images[i], rng)
                path = sub / f"{i:05d}_{labels[i]}{suffix}"
                if isinstance(image, bytes):
                    path.write_bytes(image)
                else:
                    image.save(path)
            done.touch()
        files[name] = sorted(p for p in sub.iterdir() if not p.name.startswith("."))
    return files


# -- the recipes compared ----------------------------------------------------------------------------


def plain_recipe(path: Path) -> np.ndarray:
    """The plain MNIST recipe: grayscale, invert (dark ink on light paper: a light border),
    subtract the median background and stretch, Otsu threshold, crop to the ink's bounding box,
    Lanczos resize of the longer side to 20 px, paste into 28x28 by centre of mass."""
    gray = grayscale(load_image(path))
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:  # light paper
        gray = 1 - gray
    ink = np.clip(gray - np.median(gray), 0, None)
    ink = ink / max(float(ink.max()), 1e-6)
    ink = np.where(ink > otsu(ink), ink, 0)
    ys, xs = np.nonzero(ink)
    if not len(ys):
        return np.zeros((28, 28), np.uint8)
    box = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = 20 / max(box.shape)
    size = (max(1, round(box.shape[1] * scale)), max(1, round(box.shape[0] * scale)))
    small = np.asarray(Image.fromarray(box.astype(np.float32), "F").resize(size, Image.Resampling.LANCZOS)).clip(0, 1)
    small = small / max(float(small.max()), 1e-6)
    h, w = small.shape
    cy = (small.sum(axis=1) * np.arange(h)).sum() / small.sum()
    cx = (small.sum(axis=0) * np.arange(w)).sum() / small.sum()
    top, left = min(max(round(14 - cy), 0), 28 - h), min(max(round(14 - cx), 0), 28 - w)
    field = np.zeros((28, 28), np.float32)
    field[top : top + h, left : left + w] = small
    return np.round(field * 255).astype(np.uint8)


def otsu(values: np.ndarray) -> float:
    counts, edges = np.histogram(values, bins=256, range=(0, 1))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    return float(edges[int(np.argmax(np.nan_to_num(between[:-1], nan=-1.0))) + 1])


def naive(path: Path) -> np.ndarray:
    """The reference systems' recipe: grayscale, invert, resize to 28x28."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.invert(image.convert("L")).resize((28, 28)))


def ours(path: Path) -> np.ndarray | None:
    try:
        return preprocess_file(path)
    except Exception:  # an ImageError (e.g. "blank") counts as a wrong answer
        return None


RECIPES = {"ours": ours, "plain": plain_recipe, "naive": naive}


def reading_with(source: str):
    """`preprocess_file` of another version of preprocess.py (a file), failures counted wrong as for ours."""
    spec = importlib.util.spec_from_file_location("before_preprocess", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def read(path: Path) -> np.ndarray | None:
        try:
            return module.preprocess_file(path)
        except Exception:
            return None

    return read


# -- the model ---------------------------------------------------------------------------------------


def load_classifier(ckpt: Path):
    """A function from uint8 `[N, 28, 28]` (white ink on black) to predicted digits, as `predict`
    computes them (with the checkpoint's test-time augmentation, if any); the model normalises its
    [0, 1] input itself."""
    model = checkpoints.load_classifier(ckpt)

    @torch.no_grad()
    def classify(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).unsqueeze(1).float().div_(255)
        return torch.cat([model.evaluate(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)]).numpy()

    return classify


def train_default(data_dir: str, cache_dir: str, workdir: Path) -> Path:
    print("training the default CNN (fit with no config) for the benchmark ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "digits_lightning", "fit", f"--data.data_dir={data_dir}", f"--data.cache_dir={cache_dir}",
         "--trainer.enable_progress_bar=false", "--test_after_fit=false", "--trainer.logger=false"],
        cwd=workdir, check=True, capture_output=True,
    )  # fmt: skip
    return next((workdir / "checkpoints" / "cnn").glob("epoch=*.ckpt"))


def digits(data_dir: str, cache_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    dm = MNISTDataModule(data_dir, cache_dir=cache_dir, download=False)
    dm.prepare_data()
    dm.setup("fit" if split == "val" else "test")
    dataset = dm.val_set if split == "val" else dm.test_set
    return dataset.images.numpy(), dataset.labels.numpy()


def per_file_ms(files: list[Path], read, repeats: int = 2) -> float:
    """CPU ms per file of `read` (this process's CPU time, so that other work on a shared machine
    counts less than in wall time), best of `repeats` passes."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for f in files:
            try:
                read(f)
            except Exception:
                pass
        times.append(time.process_time() - start)
    return 1000 * min(times) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--ckpt_path", default=None, help="the checkpoint to score with (default: train the default CNN)")
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--per_family", type=int, default=None, help="files per family (default: 500 val, 1,000 test)")
    parser.add_argument("--seed", type=int, default=None, help="another drawing of the files (default: 1 val, 2 test)")
    parser.add_argument("--corpus_dir", default=None, help="where the files are written (default: a temp folder)")
    parser.add_argument("--families", nargs="*", default=None, help="only these families (default: all)")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES), help="none: only --timing")
    parser.add_argument("--before", default=None, help="a preprocess.py to score beside ours, as `before`"
                        " (e.g. git show main:digits_lightning/preprocess.py > before.py)")
    parser.add_argument("--timing", action="store_true", help="also time preprocess_file per file on one core")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.before:
        RECIPES["before"] = reading_with(args.before)
        args.recipes = [*args.recipes, "before"] if args.recipes else []
    print(describe())
    work = Path(tempfile.mkdtemp(prefix="field-corpus-"))
    cache = args.cache_dir or str(work / "cache")
    per_family = args.per_family or (500 if args.split == "val" else 1000)
    seed = args.seed if args.seed is not None else {"val": 1, "test": 2}[args.split]
    corpus = Path(args.corpus_dir or work / "corpus") / (f"{args.split}-{per_family}" + (f"-seed{seed}" if args.seed is not None else ""))
    images, labels = digits(args.data_dir, cache, args.split)
    files = build(corpus, images, labels, per_family, seed=seed)
    print(f"corpus: {corpus} ({sum(map(len, files.values())):,} files from MNIST's {args.split} split)")
    ckpt = Path(args.ckpt_path) if args.ckpt_path else train_default(args.data_dir, cache, work)
    classify = load_classifier(ckpt)
    print(f"checkpoint: {ckpt}")
    names = [n for n in FAMILIES if not args.families or n in args.families or SLUG[n] in args.families]
    rows = []
    for name in names if args.recipes else []:
        truth = np.array([int(f.stem.split("_")[1]) for f in files[name]])
        scores = {}
        for recipe in args.recipes:
            out = [RECIPES[recipe](f) for f in files[name]]
            ok = np.array([o is not None for o in out])
            predicted = np.full(len(out), -1)
            if ok.any():
                predicted[ok] = classify(np.stack([o for o in out if o is not None]))
            scores[recipe] = 100 * float((predicted == truth).mean())
        rows.append((name, scores))
        print(f"  {name:24s} " + "  ".join(f"{r} {s:6.2f}%" for r, s in scores.items()), flush=True)
    if args.markdown:
        print(f"\n| family ({args.split}, {per_family} files each) | " + " | ".join(args.recipes) + " |")
        print("|---|" + "---:|" * len(args.recipes))
        for name, scores in rows:
            print(f"| {name} | " + " | ".join(f"{scores[r]:.1f}%" for r in args.recipes) + " |")
    if args.timing:
        every = [f for n in names for f in files[n]]
        decode = per_file_ms(every, lambda f: grayscale(load_image(f)))
        print(f"CPU ms per file on one core, over {len(every):,} files: decoding (load_image + grayscale) {decode:.2f}")
        for name, read in [("ours", preprocess_file)] + ([("before", RECIPES["before"])] if args.before else []):
            total = per_file_ms(every, read)
            print(f"  {name:6s} preprocess_file {total:.2f} ms ({total - decode:.2f} ms cleaning)")


if __name__ == "__main__":
    main()
