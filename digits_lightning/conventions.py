"""How each symbol set places its glyphs in the 28x28 field, and user images brought to it.

`preprocess.to_mnist` makes any image an MNIST digit: white ink on black, the ink's box scaled to
20 pixels on its longer side, the centre of mass in the middle. Other sets differ: EMNIST's glyphs
fill about 24x24 and are centred by their box, Fashion-MNIST's products fill the whole 28 pixels
on their longer side (centred by box) and keep their gray levels. `apply` re-fits preprocess's
output to a glyph set's convention; `read` gives a file in any set's, so a model is fed user
images the way its training images look. A model saves its convention
(`models.DigitClassifier`, hparam `convention`; an exported file, in its metadata), and `predict`,
`predict-onnx` and `serve` apply it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from digits_lightning.image_files import read_digit
from digits_lightning.preprocess import BLANK, ImageError, grayscale, load_image

FIELD = 28


@dataclass(frozen=True)
class Convention:
    box: int  # the glyph's longer side, in pixels
    centre: str  # "mass": centre of mass in the middle (MNIST); "box": the bounding box in the middle
    gray: bool = False  # gray levels kept (photographs of things), not ink made clean strokes


CONVENTIONS = {
    "mnist": Convention(20, "mass"),  # MNIST, and KMNIST (which follows MNIST's format; unmeasured here)
    "emnist": Convention(24, "box"),
    "fashion": Convention(28, "box", gray=True),
}


def read(path: str | bytes, convention: str = "mnist") -> tuple[np.ndarray | None, str]:
    """One user file (a path, or its bytes) as the model's uint8 `[28, 28]` input in `convention`, or
    None and the error of its row. Glyphs go through the preprocessing of digits and are re-fitted; `gray` sets
    (Fashion-MNIST's product photos) keep their gray levels: the stroke cleaning made for ink would
    flatten a shirt's shading into a silhouette."""
    rule = CONVENTIONS[convention]
    if rule.gray:
        return read_digit(path, lambda file: gray_field(load_image(file), rule))
    image, error = read_digit(path)
    return (apply(image, convention) if image is not None else None), error


def gray_field(image: Image.Image, rule: Convention) -> np.ndarray:
    """A photo of one thing -> uint8 `[28, 28]`, light on black, its gray levels kept: the thing's box
    (where it differs from the background, read off the border) scaled to `rule.box` on its longer
    side and centred, as Fashion-MNIST made its images."""
    image = image.copy()
    image.thumbnail((512, 512), Image.Resampling.BOX)
    gray = grayscale(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if background > 0.5:  # a dark thing on light paper: Fashion-MNIST's things are light on black
        gray, background = 1 - gray, 1 - background
    thing = np.clip((gray - background) / max(1 - background, 1e-6), 0, 1)
    mask = thing > 0.08
    if mask.sum() < 4:
        raise ImageError("blank", BLANK)
    ys, xs = np.nonzero(mask)
    crop = thing[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    scale = rule.box / max(h, w)
    size = (max(1, min(FIELD, round(w * scale))), max(1, min(FIELD, round(h * scale))))
    small = np.asarray(Image.fromarray(crop.astype(np.float32), "F").resize(size, Image.Resampling.LANCZOS)).clip(0, 1)
    h, w = small.shape
    field = np.zeros((FIELD, FIELD), np.float32)
    top, left = (FIELD - h) // 2, (FIELD - w) // 2
    field[top : top + h, left : left + w] = small
    return np.round(field * 255).astype(np.uint8)


def apply(image: np.ndarray, convention: str) -> np.ndarray:
    """uint8 `[28, 28]` in MNIST's convention (white on black) -> the same glyph in `convention`'s."""
    rule = CONVENTIONS[convention]
    if rule == CONVENTIONS["mnist"]:
        return image
    ys, xs = np.nonzero(image)
    if len(ys) == 0:
        return image
    glyph = image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = glyph.shape
    scale = rule.box / max(h, w)
    size = (max(1, min(FIELD, round(w * scale))), max(1, min(FIELD, round(h * scale))))
    resized = np.asarray(Image.fromarray(glyph).resize(size, Image.Resampling.LANCZOS), np.uint8)
    h, w = resized.shape
    if rule.centre == "box":
        top, left = (FIELD - h) // 2, (FIELD - w) // 2
    else:
        total = float(resized.sum())
        cy = float((resized.sum(axis=1) * np.arange(h)).sum() / total)
        cx = float((resized.sum(axis=0) * np.arange(w)).sum() / total)
        top, left = min(max(round(FIELD / 2 - cy), 0), FIELD - h), min(max(round(FIELD / 2 - cx), 0), FIELD - w)
    field = np.zeros((FIELD, FIELD), np.uint8)
    field[top : top + h, left : left + w] = resized
    return field
