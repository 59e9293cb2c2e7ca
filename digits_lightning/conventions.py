"""How each symbol set places its glyphs in the 28x28 field, and user images brought to it.

`preprocess.to_mnist` makes any image an MNIST digit: white ink on black, the ink's box scaled to
20 pixels on its longer side, the centre of mass in the middle. Other sets differ: EMNIST's glyphs
fill about 24x24 and are centred by their box, Fashion-MNIST's products fill the whole 28 pixels
on their longer side (centred by box). `apply` re-fits preprocess's output to a set's convention,
so a model is fed user images the way its training images look. A model saves its convention
(`models.DigitClassifier`, hparam `convention`); `prediction.ImageFiles` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

FIELD = 28


@dataclass(frozen=True)
class Convention:
    box: int  # the glyph's longer side, in pixels
    centre: str  # "mass": centre of mass in the middle (MNIST); "box": the bounding box in the middle


CONVENTIONS = {
    "mnist": Convention(20, "mass"),  # MNIST, and KMNIST (which follows MNIST's format; unmeasured here)
    "emnist": Convention(24, "box"),
    "fashion": Convention(28, "box"),
}


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
