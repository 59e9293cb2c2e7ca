"""Turn anyone's digit image into an MNIST digit: white ink on black, 28x28, centred as MNIST centres.

The reference systems only invert and resize, which fails on real files: MNIST digits are
size-normalised into a 20x20 box (aspect ratio kept) and centred by centre of mass in a 28x28
field, on a clean black background. `to_mnist` does the same to a photo, a scan or a drawing:

1. grayscale (EXIF orientation, transparency composited on white, any mode or bit depth), less
   salt-and-pepper noise (single pixels far from all their neighbours), and through a 3x3 median
   where the whole image is grainy (a photo in dim light);
2. polarity: an image whose edges are mostly light (or, where a shadow darkens part of them,
   whose strokes are darker than the paper around them) is dark ink on light paper, which is
   inverted (and cut to the sheet of paper where a photo shows the table around it); a dark
   canvas in a light frame (a drawing app's window in a screenshot) is cut to the canvas first;
3. background: the paper's level is subtracted (one level where the image is evenly lit, so that
   no ink is ever taken for paper; under a sharp shadow, an opening as wide as the strokes, which
   keeps the shadow's edge; under other uneven lighting a coarse estimate, after which only
   ridges count as ink, not the steps a shadow's edge leaves) and, under uneven light, the ink
   read against the paper's own lightness; then the paper's noise, measured where there is no
   ink, is cut off and the ink stretched to full white; the lines of ruled paper are erased,
   and so are straight lines that run past the digit on both sides (the box of a form's cell
   around it, the line it is written on);
4. the ink's bounding box (specks apart from the digit left out) is scaled into 20x20 (thin pen
   strokes are thickened to MNIST's width);
5. pasted into 28x28 with its centre of mass in the middle.

The result is uint8, as MNIST's own images; scaled to [0, 1] it is what the model takes (the
model applies its own normalisation).
"""

from __future__ import annotations

import functools
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

MAX_PIXELS = 100_000_000  # larger images are refused: a 12-50 MP photo is fine, a decompression bomb is not
WORK_SIZE = 512  # images are reduced to at most this many pixels a side before any analysis
BOX, FIELD = 20, 28  # MNIST: the digit fits a 20x20 box inside a 28x28 field
STROKE_SCALE = 80  # the digit is examined for thin strokes at this size (4x the box)
NOISY = 0.002  # paper noise (standard deviation, share of the gray range) above half a gray level
NOISY_PIXELS = 0.04  # pixel noise (standard deviation) above 10 gray levels is smoothed first
MIN_CONTRAST = 0.03  # ink must differ from the paper by this share of the full gray range (8 of 255 levels)
DEEP_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")  # 16-bit, 32-bit and float images
BLANK = "no digit found: the image is blank or has too little contrast"


class ImageError(ValueError):
    """A file that cannot become a digit; `kind` groups errors in the summary, the message says the fix."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def load_image(source: str | Path | bytes, mode: str = "L") -> Image.Image:
    """The image's first frame, upright (EXIF), as Pillow decoded it; an `ImageError` for anything else.

    `source` is a path, or the file's content as `bytes` (an upload), which gets the same errors.
    A JPEG is decoded straight to `mode` ("L" for the digit, "RGB" to show it) at a reduced size.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        size, source = len(source), io.BytesIO(source)
    else:
        source = Path(source)
        try:
            size = source.stat().st_size
        except OSError as err:
            raise ImageError("unreadable", f"cannot read the file ({err.strerror or err}): check it exists and is readable")
    if size == 0:
        raise ImageError("empty", "the file is empty (0 bytes): re-save or re-export the image")
    try:
        with warnings.catch_warnings():
            # Our own limit below, not Pillow's warning at 89.5 MP (which would refuse 90-100 MP images).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{width}x{height} pixels")
            image.draft(mode, (WORK_SIZE, WORK_SIZE))  # JPEG decodes straight to a smaller size: much faster
            image.load()
    except Image.DecompressionBombError as err:
        raise ImageError(
            "too large", f"the image is too large to be a digit ({err}; limit {MAX_PIXELS:,} pixels): crop or shrink it"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            "not an image",
            "Pillow cannot read this format (it reads PNG, JPEG, BMP, GIF, TIFF, WebP, ...): convert the file to PNG",
        ) from None
    except Exception as err:  # Pillow and its codecs raise many types for damaged data; all mean the same here
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ImageError(
            "damaged", f"the image data is damaged or truncated ({reason}): re-save or re-export the image"
        ) from None
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block: the pixels are still good, only the orientation is unknown
        return image


def grayscale(image: Image.Image) -> np.ndarray:
    """Float gray levels, 0 black to 1 white, of any mode; transparent pixels become white paper."""
    if image.has_transparency_data:  # alpha channels and transparent colours (PNG tRNS) alike
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(paper, rgba).convert("L"), dtype=np.float32) / 255
    if image.mode in DEEP_MODES:
        # 16-bit and float images: Pillow's conversion to "L" clips, so scale by the range instead.
        values = np.asarray(image, dtype=np.float32)
        finite = np.isfinite(values)
        if not finite.all():  # no data (NaN, infinities in a float image): taken for the background
            values = np.where(finite, values, np.median(values[finite]) if finite.any() else 0)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1:
            top = 1.0  # float images usually hold 0.0-1.0
        return np.clip(values / top, 0, 1)
    return np.divide(np.asarray(image if image.mode == "L" else image.convert("L")), 255, dtype=np.float32)


def to_mnist(image: Image.Image) -> np.ndarray:
    """An image of one digit -> uint8 `[28, 28]`, white ink on black, as MNIST; `ImageError` if blank."""
    if max(image.size) > WORK_SIZE:
        if image.mode in ("1", "P"):  # Pillow shrinks these by nearest neighbour, dropping thin strokes
            image = image.convert("RGBA" if image.has_transparency_data else "L")
        image = image.copy()
        image.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.BOX)
    gray = _smoothed(_without_impulses(grayscale(image)))
    light = gray > _otsu(gray)
    if _share(light) < 0.6:  # a dark canvas in a light frame (a drawing app's, in a screenshot) is the image
        rows, cols = _page(~light)
        canvas = light[rows, cols]
        if 0.25 * light.size <= canvas.size < light.size and _share(canvas) <= 0.3:
            gray = gray[rows, cols]
            light = gray > _otsu(gray)
    original = gray  # as read: whether it holds two gray levels only is asked of wide strokes
    rows, cols = _page(light)
    # Dark ink on light paper, the usual case, is inverted: the paper is what most of the image's
    # edges show (a bold digit cropped tight may hold more ink than paper, a blurry one as much);
    # where a shadow darkens part of them (up to four fifths), the strokes' own side of the paper
    # tells; or a sheet of light paper fills most of the image (a photo showing the table around
    # it; then only the sheet is kept).
    sheet = light[rows, cols]
    edges = _edges(light)
    cropped = sheet.size < light.size
    # Only where they are asked for: the median they are measured from costs about a millisecond.
    departures = _departures(gray) if 0.2 < edges <= 0.5 or cropped else None
    dark = edges > 0.5 or (edges > 0.2 and _dark_ink(departures))
    inverted = dark or (sheet.size >= 0.5 * light.size and _share(sheet) >= 0.75)
    if inverted:
        if cropped and not _writing_on(departures, gray.shape, rows, cols):
            rows, cols = slice(None), slice(None)  # not a table around the sheet: a shadow over the digit
        gray = 1 - gray[rows, cols]
    background, coarse = _background(gray)
    residual = gray - background
    # Light multiplies: paper that gets half the light shows its ink at half the contrast. Under
    # uneven light, dark ink on light paper is read against the paper's own lightness there, so
    # the strokes in a shadow come out as strong as the others (else their faint halves are cut
    # off as paper). Dark paper shows too little of the light it gets to tell it.
    lit = residual / np.maximum(1 - background, 0.1) if inverted and np.ndim(background) else residual
    ink, ruled = _unrule(_ink(lit))
    ink = _unbox(ink)
    if coarse and not ruled:  # (ruled paper's lines are still in `gray`)
        ink = _ridges(gray, ink, residual)
    box = _crop(ink)
    return _centre(_fit_box(box, original))


def _without_impulses(gray: np.ndarray) -> np.ndarray:
    """`gray` with each pixel that is darker, or lighter, than all 8 of its neighbours by over a
    quarter of the range (salt-and-pepper noise: a fax, an old scan) set to its neighbours' middle.
    A stroke, however thin, has neighbours of its own along it and is kept."""
    h, w = gray.shape
    if min(h, w) < 3:
        return gray
    # First the pixels that stand out from both of their neighbours in the row, on the same side
    # (most images have none: their strokes are wider than a pixel); then those of them that stand
    # out from all eight.
    step = np.diff(gray, axis=1)
    up, down = step > 0.25, step < -0.25
    ys, xs = np.divmod(np.flatnonzero((up[:, :-1] & down[:, 1:]) | (down[:, :-1] & up[:, 1:])), w - 2)
    if not ys.size:
        return gray
    xs += 1
    p = np.pad(gray, 1, mode="edge")
    around = np.stack([p[ys + 1 + dy, xs + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    lo, hi = around.min(axis=0), around.max(axis=0)
    value = gray[ys, xs]
    odd = (value < lo - 0.25) | (value > hi + 0.25)
    if not odd.any():
        return gray
    gray = gray.copy()
    gray[ys[odd], xs[odd]] = ((lo + hi) / 2)[odd]
    return gray


def _smoothed(gray: np.ndarray) -> np.ndarray:
    """`gray` through a 3x3 median filter where its pixels are noisy, by over 10 gray levels (a
    photo taken in dim light, a grainy scan): else the paper's grain passes for ink, and the digit's
    box becomes the page. The noise is read from the second differences along a quarter of the
    rows (their median: the soft edge of a blurry stroke, a straight ramp, leaves none, and sharp
    edges are few beside the paper's pixels)."""
    bend = np.abs(np.diff(gray[::4], 2, axis=1)).ravel()
    if bend.size < 64 or 0.605 * _middle(bend) <= NOISY_PIXELS:  # (0.605: a Gaussian's sigma from that median)
        return gray
    return np.asarray(Image.fromarray(np.ascontiguousarray(gray, np.float32), "F").filter(ImageFilter.MedianFilter(3)))


def preprocess_file(path: str | Path) -> np.ndarray:
    """`load_image` then `to_mnist`: the whole path from a file to the model's 28x28 input."""
    return to_mnist(load_image(path))


def _ink(residual: np.ndarray) -> np.ndarray:
    """Ink strength in [0, 1] (0 paper, 1 the strongest ink) from the image less its background:
    bright ink on darker paper."""
    ink = np.maximum(residual, 0)
    # The paper's level and noise, from the pixels below Otsu's threshold.
    threshold = _otsu(ink)
    strokes = ink[ink > threshold]
    # A sample measures the paper well enough; without clear paper, its noise is taken as nil.
    measured = _noise(residual, threshold)
    if measured is None:
        paper = residual[ink <= threshold]
        measured = _paper(paper[:: max(1, paper.size // 4096)]), 0.0
    level, noise = measured
    low = min(max(level, 0.0) + 3 * noise, threshold)
    high = _top(strokes) if strokes.size >= 2 else low
    # Blank: no ink clearly above the paper's noise. A clean digital drawing has no noise, so a faint
    # pen there counts from a few gray levels up.
    if high - low < max(MIN_CONTRAST, 3 * noise):
        raise ImageError("blank", BLANK)
    ink -= low  # in place: `ink` is this function's own copy
    ink /= high - low
    np.clip(ink, 0, 1, out=ink)
    # On noisy paper (a scan, a photo) what lies below Otsu's threshold cannot be told from the
    # noise around it, and becomes paper, as in the plain MNIST recipe. Clean digital paper keeps
    # the strokes' anti-aliased edges, as MNIST's own digits have them.
    if noise > NOISY:
        ink *= residual > threshold  # (quicker than assigning through the mask)
    return ink


def _top(strokes: np.ndarray) -> float:
    """The strokes' full strength: the 90th percentile of a sample of them (the brightest tenth
    may be glare or specks)."""
    sample = strokes.ravel()[:: max(1, strokes.size // 4096)]
    k = (9 * (sample.size - 1)) // 10
    return float(np.partition(sample, k)[k])


def _middle(values: np.ndarray) -> float:
    """The median (the upper one of an even count: quicker, and as good here)."""
    return float(np.partition(values, values.size // 2)[values.size // 2])


def _paper(values: np.ndarray, lower: bool = False) -> float:
    """The paper's level from pixels that are mostly paper: the peak of their histogram. The soft
    edges of strokes (a blurry upscale or a bold digit cropped tight has many) lie above it: a
    median would count them in and cut off the faint half of every stroke. `lower`: the peak of
    the lower half of their range only, where soft edges outnumber the paper itself (a margin
    of a few pixels beside a bold stroke)."""
    if not values.size:
        return 0.0
    lo, step = float(values.min()), max(float(values.max() - values.min()), 1e-6) / 64
    counts = np.bincount(np.minimum(((values - lo) / step).astype(np.intp), 63), minlength=64)
    if lower:
        counts = counts[:32]
    peak = lo + (int(np.argmax(counts)) + 0.5) * step
    return _middle(values[np.abs(values - peak) <= 2 * step])


def _noise(residual: np.ndarray, threshold: float) -> tuple[float, float] | None:
    """The paper's level and noise (standard deviation) where the image is paper alone: blocks
    with nothing as bright as half the ink threshold in or beside them, so that no soft stroke edge
    counts as noise. The noise is read below the level, or above it where pure white paper has
    that side clipped. None where too little of the image is clear of ink (a bold digit cropped tight)."""
    h, w = residual.shape
    b = max(3, min(h, w) // 32)
    gh, gw = h // b, w // b
    blocks = residual[: gh * b, : gw * b].reshape(gh, b, gw, b)
    top = np.full((gh + 2, gw + 2), np.inf, np.float32)
    top[1:-1, 1:-1] = _blocks(residual, b, b, np.maximum)
    rows = np.maximum(np.maximum(top[:-2], top[1:-1]), top[2:])
    near = np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])
    ys, xs = np.divmod(np.flatnonzero(near < threshold / 2), gw)
    if ys.size * b * b < 64:
        return None
    pick = slice(None, None, max(1, ys.size // 256))  # a few hundred blocks measure the paper well enough
    values = np.sort(blocks[ys[pick], :, xs[pick], :].ravel())
    n = values.size
    level = float(values[n // 2])
    below = int(np.searchsorted(values, level))  # how many lie below the level
    if below >= 0.2 * n:
        return level, 1.4826 * (level - float(values[below // 2]))
    return level, (float(values[(3 * n) // 4]) - level) / 0.6745


def _page(light: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the sheet of paper in a photo of one: bands at the edges that hold almost no
    light paper (a table or a hand around the sheet) are left out, where clean paper follows them."""
    rows, cols = _counts(light, 1) / light.shape[1] >= 0.05, _counts(light, 0) / light.shape[0] >= 0.05
    if not rows.any() or not cols.any():
        return slice(None), slice(None)
    top, bottom = int(rows.argmax()), len(rows) - int(rows[::-1].argmax())
    left, right = int(cols.argmax()), len(cols) - int(cols[::-1].argmax())
    # A table is set off from the writing by a margin of paper; a digit's own bar (a "7" cropped to
    # its ink) runs straight into the rest of the digit, and is kept. (The first k lines inside may
    # still be the sheet's blurred edge, so the next 2k are looked at.)
    k = max(1, round(0.02 * min(light.shape)))
    sheet = light[top:bottom, left:right]

    def clean(band: np.ndarray) -> bool:
        return band.size > 0 and _share(band) >= 0.95

    top = top if clean(sheet[k : 3 * k]) else 0
    bottom = bottom if clean(sheet[-3 * k : -k]) else len(rows)
    left = left if clean(sheet[:, k : 3 * k]) else 0
    right = right if clean(sheet[:, -3 * k : -k]) else len(cols)
    return slice(top, bottom), slice(left, right)


def _unrule(ink: np.ndarray) -> tuple[np.ndarray, bool]:
    """Erases the lines of ruled or squared paper, and says whether it found any: thin bands of rows
    (and columns) inked across nearly the whole image, with much less ink just beside them, where
    there are at least two such lines (a single one may be a digit's bar, cropped tight; a bold
    digit cropped tight has rows inked across it too, but inked about as much beside them). Rows and
    columns are both found before either is erased: erasing the rows first would cut gaps into the
    columns' lines."""

    inked = ink > 0

    def rules(axis: int) -> np.ndarray:
        cover = _counts(inked, axis) / inked.shape[axis]
        full = cover >= 0.9
        if not full.any():
            return full
        starts = np.flatnonzero(full & ~np.concatenate([[False], full[:-1]]))
        ends = np.flatnonzero(full & ~np.concatenate([full[1:], [False]])) + 1
        lines = np.zeros_like(full)
        for a, b in zip(starts, ends):
            gap = max(2, b - a)
            beside = [cover[i] for i in (a - gap, b - 1 + gap) if 0 <= i < len(cover)]
            if beside and max(beside) < 0.5:
                lines[a:b] = True
        if np.count_nonzero(lines & ~np.concatenate([[False], lines[:-1]])) < 2:
            lines[:] = False
        return lines

    rows, cols = rules(1), rules(0)
    if not rows.any() and not cols.any():
        return ink, False
    ink = ink.copy()
    ink[rows] = 0
    ink[:, cols] = 0
    return ink, True


def _unbox(ink: np.ndarray) -> np.ndarray:
    """Erases straight lines drawn apart from the digit: the box of a form's cell around it, the
    line it is written on. A line is a thin band (at most a tenth of the image) of rows, or columns,
    inked without a break over at least half the image. It is erased where the ink that is not in
    any such line (the digit) lies wholly on one side of it, does not touch it, and is passed by
    it at both ends by a tenth of the digit's extent, or met there by another line (a box's
    corner); the line it is written on, below it, even where the digit touches it. A digit's own
    bars and stems join the rest of it (a "7", a "2", a "4" whose stem rises past its arm), or are
    all there is of it (a "1"): they are kept."""
    inked = ink > 0
    h, w = inked.shape
    if min(h, w) < 32:  # no room for a box around a digit, whose own strokes are as wide as lines
        return ink
    bands = []  # (axis, first line, past the last, first inked along it, past the last)
    for axis, (n, length) in enumerate(((h, w), (w, h))):
        mask = inked if axis == 0 else inked.T
        full = np.flatnonzero(_counts(mask, 1) >= 0.5 * length)
        if not full.size:
            continue
        for band in np.split(full, np.flatnonzero(np.diff(full) > 1) + 1):
            a, b = int(band[0]), int(band[-1]) + 1
            along = mask[a:b].any(axis=0)
            lo, hi = int(along.argmax()), length - int(along[::-1].argmax())
            if b - a <= max(2, n // 10) and _share(along[lo:hi]) >= 0.9:
                bands.append((axis, a, b, lo, hi))
    if not bands:
        return ink
    lines = np.zeros_like(inked)
    for axis, a, b, _, _ in bands:  # with a line more on each side: a line's edges are soft
        (lines if axis == 0 else lines.T)[max(0, a - 1) : b + 1] = True
    digit = inked & ~lines
    if np.count_nonzero(digit) < 0.1 * np.count_nonzero(inked):  # too little else to judge the lines against
        return ink

    def meets(axis: int, end: int, a: int, b: int) -> bool:  # another line crosses this one's end
        return any(o[0] != axis and o[1] - 2 <= end <= o[2] + 2 and o[3] <= b and o[4] >= a for o in bands)

    erase = np.zeros_like(inked)
    for axis, a, b, lo, hi in bands:
        field = digit if axis == 0 else digit.T
        spread, across = field.any(axis=0), field.any(axis=1)
        first, last = int(spread.argmax()), len(spread) - int(spread[::-1].argmax())
        margin = max(2, round(0.1 * (last - first)))
        beside = len(across) - int(across[::-1].argmax()) <= a or int(across.argmax()) >= b
        # Touching: within the line's own width of it, its ends included (a "0" squared to its box
        # joins its straight sides at their ends; an open "4" stops its bar just short of its stem).
        gap = max(1, b - a)
        near = [i for i in range(a - 1 - gap, a - 1) if i >= 0] + [i for i in range(b + 1, b + 1 + gap) if i < len(field)]
        touching = field[near, max(0, lo - 2) : hi + 2].any()
        past_lo, past_hi = lo <= first - margin, hi >= last + margin
        ends = (past_lo or meets(axis, lo, a, b)) and (past_hi or meets(axis, hi - 1, a, b))
        # The line a digit is written on is erased even where the digit touches it: a line below
        # the digit that runs past it at both ends on its own. Anywhere else a line the digit
        # touches may be a stroke of its own (the stem of a "4" rising past its arm).
        written_on = axis == 0 and int(across.argmax()) < a and past_lo and past_hi
        if beside and (written_on or not touching) and ends:
            (erase if axis == 0 else erase.T)[max(0, a - 1) : b + 1, max(0, lo - 1) : hi + 1] = True
    return np.where(erase, np.float32(0), ink) if erase.any() else ink


def _background(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """The paper's level everywhere (slow lighting changes), where ink is bright on darker paper,
    and whether it comes from the coarse grid (which blurs a sharp edge of light).

    Evenly lit paper gets one level (a scalar). Under a sharp shadow, the image opened over a
    square as wide as the strokes (`_under_sharp_shadow`). Under other uneven light, two passes on
    a coarse grid of cells about 1/16 of the image: an opening (3x3-cell minimum then maximum)
    finds where the ink is; the paper level is then the average of the cells' paper pixels alone,
    spread into cells that hold none.
    """
    h, w = gray.shape
    cell = max(1, min(h, w) // 16)
    if cell < 2:  # MNIST-sized already: too small for uneven lighting to matter
        return np.float32(gray.min()), False
    # Evenly lit, the usual case, gets one level for the whole image, so no ink is ever taken for
    # paper. It is told by an opening over cells wider than the strokes (a bold digit cropped tight
    # has strokes a quarter of the image wide, which an opening over finer cells keeps as paper).
    # "Evenly" is judged against the ink's contrast: a shadow darkens paper by a good share of it.
    threshold = _otsu(gray)
    sample = gray[::3, ::3].ravel()
    ink, paper = sample[sample > threshold], sample[sample <= threshold]
    if not ink.size or not paper.size:
        return np.float32(_middle(sample)), False
    level = _paper(paper)
    contrast = _middle(ink) - level
    width = 2 * _run_width(gray[::2, ::2] > threshold)  # at half the resolution: as good, 4x fewer pixels
    # Under a shadow, Otsu's threshold may split the lit paper from the shadowed paper and the ink
    # together, and the "strokes" above are then partly the shadow. Splitting that bright class
    # again finds the ink: where its runs are far narrower than the first ones, or the middle
    # class (the shadowed paper) lies in runs far wider than the ink's, or covers five times the
    # ink's area (shadowed paper about the threshold breaks into short runs; the soft rims of
    # blurry strokes reach about four times their cores), the ink's runs are the strokes. (Where
    # they are merely somewhat narrower, they are the cores of soft or bold strokes, and the first
    # width stays.) Only asked where the bright class covers over a quarter of the image: a shadow
    # that joins it covers a good share of the page; strokes alone rarely do. Where the light falls
    # off within a shadow, the second split may fall inside the shadow too, and the ink is split off
    # a third time; there, only a middle class that clearly is shadowed paper counts (the cores of
    # blurry strokes are many times narrower than their first width too).
    # A sharp shadow's paper is a middle class too, in wide patches of one level: the grid's cells
    # blur its edge, and the evenness test's cells, sized from strokes it may join, miss it. It gets
    # an estimate of its own, which keeps its edge (and no ridge test after it).
    low, bright, shadow = threshold, ink, False
    for split in range(2):
        if bright.size <= 0.25 * sample.size:
            break
        half = gray[::2, ::2]
        top = low + _otsu(np.clip(bright - low, 0, None))
        strong, middle = half > top, (half > low) & (half <= top)
        core = _run_width(strong)
        narrower = split == 0 and core < 0.125 * width
        many = np.count_nonzero(middle) > 5 * np.count_nonzero(strong)  # (at half size)
        if not shadow:
            shadow = _sharp_shadow(half, middle, core, contrast)
        if narrower or _run_width(middle) > 2 * core or many:
            width = 2 * core
        low, bright = top, bright[bright > top]
    # Strokes too wide for cells wider than them to fit across the image, yet no wider than a third
    # of its long side and touching under 40 % of the image's edges: a bold digit cropped tight (the
    # bar of a "1" filling a narrow frame), not a shadow, which would be as wide along the long side
    # or lie along the edges. Lighting cannot be told from ink there, and any finer estimate takes
    # the strokes' middles for paper and hollows them: one level, read low, as the margin beside
    # such strokes is mostly their soft edge.
    if 1.5 * width > 0.6 * min(h, w) and width < 0.35 * max(h, w) and _edges(gray > threshold) < 0.4:
        return np.float32(_paper(paper, lower=True)), False
    if shadow:
        return _under_sharp_shadow(gray, width), False
    # (At least 4 cells a side: on 2 or 3, the paper level padded around them reaches every cell,
    # and any shadow passes for even light.)
    wide = min(max(cell, round(1.5 * width)), max(cell, min(h, w) // 4))
    opened = _opened(gray, wide, level, lowest=True)
    if float(opened.max() - opened.min()) < max(0.05, 0.2 * contrast):
        return np.float32(level), False
    grid = (max(1, w // cell), max(1, h // cell))

    def coarse(values: np.ndarray) -> Image.Image:
        return Image.fromarray(values.astype(np.float32), "F").resize(grid, Image.Resampling.BOX)

    opened = _opened(gray, cell, level)
    first = np.asarray(Image.fromarray(opened, "F").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    flat = gray - first
    paper = (flat <= 0.5 * _otsu(np.clip(flat, 0, None))).astype(np.float32)  # strokes and their soft edges out
    total, weight = np.asarray(coarse(gray * paper)), np.asarray(coarse(paper))
    for _ in range(8):  # normalised convolution: fill the cells without paper from their neighbours
        if weight.min() > 0.05:
            break
        total, weight = _blur3(total), _blur3(weight)
    level = Image.fromarray(total / np.maximum(weight, 1e-6), "F")
    return np.asarray(level.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32), True


def _sharp_shadow(half: np.ndarray, middle: np.ndarray, core: float, contrast: float) -> bool:
    """Whether the middle class of `half` (the image at half size) is a sharp shadow's paper: over
    4 % of the image lies deeper in it than half the width `core` of the strokes above it, at one
    level (its 10th to 90th percentiles within 12 % of the ink's contrast). The soft rims of blurry
    strokes are thinner than that; light falling off across the page spreads its levels (and the
    coarse grid follows such light well)."""
    deep = _eroded(middle, max(1, round(core / 2)))
    if np.count_nonzero(deep) <= 0.04 * deep.size:
        return False
    lo, hi = np.percentile(half[deep], [10, 90])
    return float(hi - lo) < 0.12 * contrast


def _eroded(mask: np.ndarray, r: int) -> np.ndarray:
    """Where the square of 2r+1 pixels around a pixel lies wholly in `mask` (the edges repeated
    beyond the border): each window's count from running sums along the rows, then the columns,
    at one cost for any `r` (a rank filter's grows with the square)."""
    out, n = mask, 2 * r + 1
    for _ in range(2):  # rows, then (transposed) columns, and back
        sums = np.cumsum(np.pad(out, ((0, 0), (r, r)), mode="edge"), axis=1, dtype=np.int32)
        sums = np.pad(sums, ((0, 0), (1, 0)))
        out = (sums[:, n:] - sums[:, :-n] == n).T
    return out


def _under_sharp_shadow(gray: np.ndarray, width: float) -> np.ndarray:
    """The paper's level under a sharp shadow: an opening (minimum then maximum over a square as
    wide as the strokes) takes the strokes out and keeps every shape of light wider than them as
    it is, the shadow's straight edge and its corners too, which the coarse grid blurs into bands
    of "ink". Computed at 128 px a side at most and brought back up (bilinear): the opening's cost
    grows with its square."""
    h, w = gray.shape
    scale = min(1.0, 128 / max(h, w))
    small = Image.fromarray(np.ascontiguousarray(gray, np.float32), "F")
    if scale < 1:
        small = small.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    level = np.asarray(small)
    passes = max(1, round(width * scale / 2))  # each over 3x3: a square of 2 * passes + 1 in all
    for op in (np.minimum, np.maximum):
        for _ in range(passes):
            level = _filter3(level, op)
    if scale < 1:
        level = np.asarray(Image.fromarray(level, "F").resize((w, h), Image.Resampling.BILINEAR))
    return level


def _ridges(gray: np.ndarray, ink: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """The ink where `gray` is a ridge, brighter than the paper on both sides of it (along one of
    four directions, two stroke widths away): a stroke is. Under a sharp shadow, the coarse
    background leaves the shadowed paper along the shadow's edge as a band of "ink" that is
    brighter than the paper on one side only: a step, not a ridge, and it is dropped."""
    full = gray.shape
    # At half the resolution where the image is large (4x fewer pixels, as good).
    k = 2 if min(full) >= 160 else 1
    if k == 2:
        gray, residual = (np.asarray(Image.fromarray(np.ascontiguousarray(a, np.float32), "F").reduce(2)) for a in (gray, residual))
    h, w = gray.shape
    s = max(2, min(round(2 * _ink_run_width(ink[::k, ::k] > 0.5)), min(h, w) // 6))
    g = _blur3(gray)
    p = np.pad(g, s, mode="edge")
    ridge = np.full(gray.shape, -np.inf, np.float32)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ahead = p[s + dy * s : s + dy * s + h, s + dx * s : s + dx * s + w]
        behind = p[s - dy * s : s - dy * s + h, s - dx * s : s - dx * s + w]
        ridge = np.maximum(ridge, np.minimum(g - ahead, g - behind))
    # A pixel's margin around the ridges kept: the strokes' soft edges are not ridges themselves.
    keep = _dilate3(ridge >= 0.25 * residual)
    if k == 2:
        keep = keep.repeat(2, 0).repeat(2, 1)[: full[0], : full[1]]  # reduce(2) keeps an odd last line
    return np.where(keep, ink, np.float32(0))


def _dilate3(mask: np.ndarray) -> np.ndarray:
    """`mask` grown by a pixel in all eight directions."""
    return _filter3(mask, np.maximum)


def _filter3(values: np.ndarray, op: np.ufunc) -> np.ndarray:
    """`op` (np.minimum or np.maximum) over each pixel's 3x3 neighbourhood, the edges repeated
    beyond the border, as two 1-D passes (Pillow's rank filters sort every neighbourhood: up to
    3x slower on the cell grids here)."""
    rows = values.copy()
    op(rows[:, 1:], values[:, :-1], out=rows[:, 1:])
    op(rows[:, :-1], values[:, 1:], out=rows[:, :-1])
    out = rows.copy()
    op(out[1:], rows[:-1], out=out[1:])
    op(out[:-1], rows[1:], out=out[:-1])
    return out


def _opened(gray: np.ndarray, cell: int, paper: float, lowest: bool = False) -> np.ndarray:
    """An opening (3x3-cell minimum then maximum) of the image's averages over cells of `cell`
    pixels, or of their lowest values (the paper's, where a cell holds any paper at all)."""
    h, w = gray.shape
    gh, gw = max(1, h // cell), max(1, w // cell)
    if lowest:
        cells = _blocks(gray, h // gh, w // gw, np.minimum).astype(np.float32)
    else:
        cells = Image.fromarray(np.ascontiguousarray(gray, np.float32), "F").resize((gw, gh), Image.Resampling.BOX)
    # Padded with the paper's level, so that strokes running into the edge of a tightly cropped
    # digit are found as ink, not taken for a dark (here: bright) band of paper.
    inner = np.asarray(cells)
    cells = np.full((inner.shape[0] + 2, inner.shape[1] + 2), paper, np.float32)
    cells[1:-1, 1:-1] = inner
    return _filter3(_filter3(cells, np.minimum), np.maximum)[1:-1, 1:-1]


def _edges(mask: np.ndarray) -> float:
    """The share of the image's outermost pixels that `mask` holds."""
    return _share(np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]]))


def _share(mask: np.ndarray) -> float:
    """The share of `mask` that is set (a count: 10x quicker than a boolean array's mean)."""
    return np.count_nonzero(mask) / mask.size


def _counts(mask: np.ndarray, axis: int) -> np.ndarray:
    """How many of `mask`'s pixels are set along `axis`, per line (summed as bytes into int32: 2x
    quicker than a boolean sum, which adds int64s)."""
    return mask.view(np.uint8).sum(axis=axis, dtype=np.int32)


def _blocks(values: np.ndarray, bh: int, bw: int, op: np.ufunc) -> np.ndarray:
    """`op` (np.maximum or np.minimum) over each block of `bh` x `bw` pixels (the last partial
    ones left out). Not a reduction over a 4-D view: that is 20x slower. The rows' extremes are
    then reduced across each block by strided slices, or, for wide blocks, over a 3-D view."""
    gh, gw = values.shape[0] // bh, values.shape[1] // bw
    rows = op.reduce(values[: gh * bh, : gw * bw].reshape(gh, bh, gw * bw), axis=1)
    if bw > 12:  # (a slice each for over 12 columns is slower than the view)
        return op.reduce(rows.reshape(gh, gw, bw), axis=2)
    out = rows[:, 0::bw].copy()
    for i in range(1, bw):
        op(out, rows[:, i::bw], out=out)
    return out


def _blur3(a: np.ndarray) -> np.ndarray:
    padded = np.pad(a, 1, mode="edge")
    return sum(padded[i : i + a.shape[0], j : j + a.shape[1]] for i in range(3) for j in range(3)) / 9


def _otsu(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold: the level that best splits the values into two classes."""
    values = values.ravel()[:: max(1, values.size // 16384)]  # a histogram needs no more than a sample
    top = max(float(values.max()), 1e-6)
    index = (values * (bins / top)).astype(np.uint8)  # (the values are never negative)
    hist = Image.frombuffer("L", (index.size, 1), index).histogram()  # quicker than np.bincount
    counts = np.array(hist[:bins])
    counts[-1] += hist[bins]  # the values equal to `top`
    mass = np.cumsum(counts * ((np.arange(bins) + 0.5) * (top / bins)))
    weight = np.cumsum(counts)
    total, total_mass = weight[-1], mass[-1]
    low, mass, high = weight[:-1], mass[:-1], total - weight[:-1]  # the classes below and above each split
    # A split with an empty class scores 0 (low * high), below any split of two classes.
    between = low * high * (mass / np.maximum(low, 1) - (total_mass - mass) / np.maximum(high, 1)) ** 2
    return (int(np.argmax(between)) + 1) * (top / bins)


def _crop(ink: np.ndarray) -> np.ndarray:
    """The digit's bounding box: where the strong ink is (so noise specks do not stretch it), grown
    into the soft edge of the strokes, as MNIST's box includes its anti-aliased pixels."""
    strong = ink > 0.5
    if not strong.any():  # e.g. nothing but the lines of ruled paper
        raise ImageError("blank", BLANK)
    # Columns, then rows within them, then columns again within those rows: a speck beside the
    # digit along one axis is cut off along the other.
    left, right = _span(_off_the_edge(_counts(strong, 0)))
    top, bottom = _span(_off_the_edge(_counts(strong[:, left:right], 1)))
    left, right = _span(_off_the_edge(_counts(strong[top:bottom], 0)))
    margin = max(1, round(0.05 * max(bottom - top, right - left)))
    faint = ink > 0.05
    top, bottom = _grow(faint[:, left:right].any(axis=1), top, bottom, margin)
    left, right = _grow(faint[top:bottom].any(axis=0), left, right, margin)
    return ink[top:bottom, left:right]


def _off_the_edge(mass: np.ndarray, share: float = 0.25, gap: float = 0.2, edge: float = 0.05) -> np.ndarray:
    """`mass` (ink per row or column) without a piece at either end that begins within `edge` of the
    image's border, holds under `share` of the mass, and is cut off from the rest by an empty band
    of over `gap` of the image: where a shadow's edge meets the border, the background misses its
    tip, and leaves it as specks. (So goes the piece of a neighbouring digit at the edge of a crop.)
    Anywhere else, a piece of under 2 % of the mass cut off by over a tenth of the image goes too:
    specks of dust or a pen's dots around the digit."""
    band, near, speck = max(1, round(gap * mass.size)), max(1, round(edge * mass.size)), max(1, round(0.1 * mass.size))
    inked = np.flatnonzero(mass)
    if inked.size < 2 or inked[-1] + 1 - inked[0] - inked.size < min(band, speck):
        return mass  # no empty band as wide as either (the usual case: one digit, no specks)
    mass = mass.copy()
    for m in (mass, mass[::-1]):  # from the start, then from the end (a view: writes go to `mass`)
        inked = np.flatnonzero(m)
        if inked.size < 2:
            continue
        for width, most, where in ((band, share, near), (speck, 0.02, m.size)):
            if inked[0] >= where:
                continue
            wide = np.flatnonzero(np.diff(inked) > width)  # empty bands wider than `width` between inked lines
            if wide.size and m[: inked[wide[0]] + 1].sum() < most * m.sum():
                m[: inked[wide[0]] + 1] = 0
                inked = inked[wide[0] + 1 :]
    return mass


def _span(mass: np.ndarray, trim: float = 0.001) -> tuple[int, int]:
    """First and past-the-last index holding the mass, leaving out `trim` of it at each end."""
    cumulative = np.cumsum(mass)
    total = float(cumulative[-1]) if cumulative.size else 0.0
    first, last = np.searchsorted(cumulative / max(total, 1e-9), (trim, 1 - trim))
    return int(first), int(last) + 1


def _grow(has_ink: np.ndarray, lo: int, hi: int, margin: int) -> tuple[int, int]:
    """Extends `[lo, hi)` by up to `margin` on each side, as long as the next row (or column) holds ink."""
    for _ in range(margin):
        if lo == 0 or not has_ink[lo - 1]:
            break
        lo -= 1
    for _ in range(margin):
        if hi == len(has_ink) or not has_ink[hi]:
            break
        hi += 1
    return lo, hi


def _fit_box(ink: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Scale the digit so its longer side is 20 pixels (aspect kept), thickening thin pen strokes
    first, and thinning wide strokes where the `original` image holds two gray levels only."""
    big = Image.fromarray(ink.astype(np.float32), "F").resize(_longer_side(ink, STROKE_SCALE), Image.Resampling.BILINEAR)
    big = np.asarray(big)
    # Reduced from a large image, a thin line fades to half its strength: bring the strokes back to full.
    strokes = big[big > 0.05]
    full = np.clip(big / max(_top(strokes) if strokes.size else 1.0, 1e-6), 0, 1)
    width = _stroke_width(full)
    if width < 4:  # under 1 pixel once in 20x20: MNIST's strokes are 2-3 pixels wide
        full = _filtered(full, ImageFilter.MaxFilter(min(9, 2 * round((8 - width) / 2) + 1)))
    elif width > 16 and _two_levels(original):
        # Over 4 pixels once in 20x20, with hard edges: a binarised scan of a digit stretched to fill
        # its square (as some scanned sets are) or a broad 1-bit brush. Brought back to MNIST's 3.
        full = _filtered(full, ImageFilter.MinFilter(min(9, 2 * round((width - 12) / 2) + 1)))
    small = _lanczos(full, _longer_side(ink, BOX)).clip(0, 1)
    return small / max(float(small.max()), 1e-6)


def _filtered(values: np.ndarray, rank: ImageFilter.RankFilter) -> np.ndarray:
    """`values` through Pillow's rank filter (the maximum or minimum over a square around each pixel)."""
    return np.asarray(Image.fromarray(values, "F").filter(rank))


def _lanczos(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`values` resized to `size` (width, height) by Pillow's Lanczos filter, as two products with
    its weights: 4x quicker than Pillow's resampling of float images, and at most a float's last
    bit from it."""
    out = values.astype(np.float64)
    if size[0] != values.shape[1]:
        out = (out @ _lanczos_weights(values.shape[1], size[0]).T).astype(np.float32).astype(np.float64)
    if size[1] != values.shape[0]:
        out = _lanczos_weights(values.shape[0], size[1]) @ out
    return out.astype(np.float32)


@functools.lru_cache(maxsize=1024)
def _lanczos_weights(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's Lanczos (a = 3) weights from `n_in` samples to `n_out`, as an `[n_out, n_in]` matrix."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)  # a reduction widens the filter
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - 3 * stretch + 0.5), 0), min(int(centre + 3 * stretch + 0.5), n_in)
        x = (np.arange(lo, hi) - centre + 0.5) * (1.0 / stretch)
        w = np.where((x >= -3) & (x < 3), np.sinc(x) * np.sinc(x / 3), 0.0)
        total = float(np.cumsum(w)[-1]) if w.size else 0.0
        weights[i, lo:hi] = w / total if total else w
    weights.flags.writeable = False  # shared by every call through the cache
    return weights


def _two_levels(gray: np.ndarray) -> bool:
    """Whether `gray` holds two gray levels only: a binarised scan or a 1-bit drawing, whose strokes
    have no soft edges (asked only of wide strokes: four passes over the image)."""
    return not np.logical_and(gray > gray.min(), gray < gray.max()).any()


def _longer_side(image: np.ndarray, side: int) -> tuple[int, int]:
    """(width, height) of `image` scaled so its longer side is `side` pixels, the aspect ratio kept."""
    h, w = image.shape
    scale = side / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _stroke_width(ink: np.ndarray) -> float:
    """Mean stroke width in pixels: ink area over half its outline (a stroke of width w and length L
    covers w*L pixels with about 2*L on its edge)."""
    mask = ink > 0.5
    area = np.count_nonzero(mask)
    if area == 0:
        return 0.0
    # Inner pixels have ink on all four sides; those on the image's border never do.
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    edge = area - np.count_nonzero(inner)
    return 2 * area / max(edge, 1)


def _departures(gray: np.ndarray) -> np.ndarray:
    """The image's departures from its own median over 7x7 neighbourhoods, at 24 pixels a side:
    strokes, narrower than half of that window, depart far, on their side; a bold pen's are too
    (at twice the size, strokes a tenth of the image wide would be their own median, and the paper
    beside them and in their loops would depart further). A shadow's edge, wider, is kept by a
    median and hardly departs (a mean would blur it and depart on both of its sides, outweighing a
    small digit's strokes)."""
    h, w = gray.shape
    image = Image.fromarray(np.ascontiguousarray(gray, np.float32), "F")
    scale = min(1.0, 24 / max(h, w))
    if scale < 1:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    return np.asarray(image) - np.asarray(image.filter(ImageFilter.MedianFilter(7)))


def _dark_ink(departures: np.ndarray) -> bool:
    """Whether the ink is darker than the paper: the image departs further below its median than above."""
    lo, hi = np.percentile(departures, [1, 99])
    return -lo > hi


def _writing_on(departures: np.ndarray, shape: tuple[int, int], rows: slice, cols: slice) -> bool:
    """Whether the dark strokes are on the sheet that `_page` found, not in the bands around it: a
    table holds no writing, while a shadow that `_page` took for one may hold the whole digit."""
    sy, sx = departures.shape[0] / shape[0], departures.shape[1] / shape[1]
    inside = np.zeros(departures.shape, bool)
    inside[round((rows.start or 0) * sy) : round((rows.stop or shape[0]) * sy),
           round((cols.start or 0) * sx) : round((cols.stop or shape[1]) * sx)] = True  # fmt: skip
    darkest_in = -float(departures[inside].min(initial=0))
    darkest_out = -float(departures[~inside].min(initial=0))
    return darkest_in >= 0.5 * darkest_out


def _runs(mask: np.ndarray) -> np.ndarray:
    """The lengths of the runs of ink across the rows of `mask`. The rows are laid end to end, each
    between blank pixels, so that no run crosses into the next row: the changes of value then
    alternate, start and end of each run (one pass, 2.4x faster than finding them row by row)."""
    rows = np.zeros((mask.shape[0], mask.shape[1] + 2), bool)
    rows[:, 1:-1] = mask
    line = rows.ravel()
    changes = np.flatnonzero(line[1:] != line[:-1])
    return changes[1::2] - changes[0::2]


def _run_width(mask: np.ndarray) -> float:
    """The strokes' width in pixels: the median length of the runs of ink across rows, or down
    columns where that is shorter. Strokes make many short runs, a shadow taken for ink a few
    long ones, which a median passes over (a mean of area over outline would not)."""

    def median_run(m: np.ndarray) -> float:
        runs = _runs(m)
        n = runs.size
        if not n:
            return 0.0
        middle = np.partition(runs, [(n - 1) // 2, n // 2])
        return (float(middle[(n - 1) // 2]) + float(middle[n // 2])) / 2  # the median

    return min(median_run(mask), median_run(mask.T))


def _ink_run_width(mask: np.ndarray) -> float:
    """The strokes' width in pixels as the length of the run that the median ink pixel lies in,
    across rows, or down columns where that is shorter: specks of noise, many but small, hardly
    count (in `_run_width` they can outnumber the strokes' runs)."""

    def by_ink(m: np.ndarray) -> float:
        runs = np.sort(_runs(m))
        if not runs.size:
            return 0.0
        return float(runs[np.searchsorted(np.cumsum(runs), runs.sum() / 2)])

    return min(by_ink(mask), by_ink(mask.T))


def _centre(digit: np.ndarray) -> np.ndarray:
    """Paste into 28x28 with the centre of mass at the middle, as MNIST does."""
    h, w = digit.shape
    total = float(digit.sum())
    ys, xs = np.arange(h), np.arange(w)
    cy = float((digit.sum(axis=1) * ys).sum() / total) if total else (h - 1) / 2
    cx = float((digit.sum(axis=0) * xs).sum() / total) if total else (w - 1) / 2
    top, left = round(FIELD / 2 - cy), round(FIELD / 2 - cx)  # MNIST's centres of mass average (14.0, 14.0)
    top, left = min(max(top, 0), FIELD - h), min(max(left, 0), FIELD - w)  # keep the whole digit inside
    field = np.zeros((FIELD, FIELD), np.float32)
    field[top : top + h, left : left + w] = digit
    return np.round(field * 255).astype(np.uint8)


def load_original(path: str, size: int) -> np.ndarray | None:
    """A thumbnail of the file as given, in colour, at most `size` pixels a side, RGB uint8
    (transparency on white), or None if it cannot be read (its row already says why)."""
    try:
        image = load_image(path, mode="RGB")
        image.thumbnail((size, size))
        if not image.has_transparency_data and image.mode not in DEEP_MODES:
            return np.asarray(image.convert("RGB"))
        gray = np.round(grayscale(image) * 255).astype(np.uint8)  # transparency on white, deep images scaled
        return np.repeat(gray[..., None], 3, axis=2)
    except Exception:
        return None
