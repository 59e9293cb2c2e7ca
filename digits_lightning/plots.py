"""Pictures of the data and of the learning, drawn with matplotlib and saved as PNGs.

The figures are plain `matplotlib.figure.Figure`s rendered by the Agg canvas: no pyplot, so no
global state and no window, whatever backend the user has configured. `render` gives the RGB
pixels that go both into the PNG and into TensorBoard, so the two always show the same picture.
Only numpy, matplotlib and Pillow: this module draws, and knows nothing of models or data.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from PIL import Image

from digits_lightning.atomic_write import write_atomically

DPI = 100
COLUMNS = 8  # digits per row in the image grids
PX_PER_COLUMN = 100
GAP, CAPTION = 4, 9  # room between the digits and above each for its caption, in the digits' pixels
SHEET_SIDE = 84  # pixels a side of each image on the prediction contact sheet
TRAIN, VAL = "tab:blue", "tab:orange"


def sample_grid(images: np.ndarray, labels, augmented: bool = False) -> Figure:
    """Images `[N, 28, 28]` (or `[N, 1, 28, 28]`, any scale) under their labels (class names)."""
    title = "Training images and their labels" + (" (augmented, as the model gets them)" if augmented else "")
    return _image_grid(images, [str(label) for label in labels], title)


def learning_curves(history: list[dict[str, float]], title: str = "Learning curves") -> Figure:
    """Accuracy and loss per epoch, training against validation, with the best validation epoch marked.

    `history` holds one dict per epoch with any of `train_acc`, `val_acc`, `train_loss`, `val_loss`
    (missing or NaN values are left out, e.g. epochs without validation) and its `epoch`, counted
    from 1 (by default its place in the list).
    """
    fig = Figure(figsize=(10, 4), dpi=DPI, layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    epochs = np.array([h.get("epoch", i + 1) for i, h in enumerate(history)])
    best = best_epoch(history)
    for ax, metric, scale, label in ((acc_ax, "acc", 100, "accuracy (%)"), (loss_ax, "loss", 1, "cross-entropy loss")):
        for stage, colour, name in (("train", TRAIN, "training"), ("val", VAL, "validation")):
            values = np.array([h.get(f"{stage}_{metric}", math.nan) for h in history], dtype=float) * scale
            seen = ~np.isnan(values)
            if seen.any():
                ax.plot(epochs[seen], values[seen], "o-", color=colour, label=name, markersize=4)
        if best is not None:
            value = scale * history[best].get(f"val_{metric}", math.nan)
            shown = f"{value:.2f}%" if metric == "acc" else f"{value:.4f}"
            ax.axvline(epochs[best], color="0.6", linestyle="--", linewidth=1)
            ax.plot(epochs[best], value, "*", color=VAL, markersize=14, label=f"best epoch ({epochs[best]}): {shown}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    acc_ax.set_title("Accuracy")
    loss_ax.set_title("Loss")
    fig.suptitle(title)
    return fig


def best_epoch(history: list[dict[str, float]]) -> int | None:
    """Index of the first epoch with the highest validation accuracy (the one ModelCheckpoint keeps)."""
    scores = [h.get("val_acc", math.nan) for h in history]
    scores = [-math.inf if math.isnan(s) else s for s in scores]
    if not scores or max(scores) == -math.inf:
        return None
    return scores.index(max(scores))


def confusion_matrix(counts: np.ndarray, title: str = "Confusion matrix", class_names=None) -> Figure:
    """Counts `[true, predicted]` written in the cells; colour is each cell's share of its true class,
    on a log scale, so that a handful of mistakes stands out next to thousands of right answers."""
    counts = np.asarray(counts, dtype=np.int64)
    classes = len(counts)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(7, 6.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    norm = LogNorm(vmin=1e-3, vmax=1, clip=True)
    shown = ax.imshow(np.ma.masked_equal(share, 0), cmap="Blues", norm=norm)
    # Every cell placed on the colour scale in one call: the norm's masked-array arithmetic is slow to call 100 times.
    dark = (counts > 0) & (np.ma.filled(norm(np.clip(share, norm.vmin, norm.vmax)), 0) > 0.6)
    for true in range(classes):
        for pred in range(classes):
            n = counts[true, pred]
            # Inside its cell, so out of the layout's measuring: the same picture, a tenth less drawing.
            ax.text(
                pred, true, str(n), ha="center", va="center", fontsize=9 if n else 8,
                color="white" if dark[true, pred] else ("black" if n else "0.75"),
            ).set_in_layout(False)  # fmt: skip
    names = [str(name) for name in class_names] if class_names is not None else [str(i) for i in range(classes)]
    long = max(map(len, names)) > 2  # e.g. Fashion-MNIST's "Sneaker": column labels slanted, not overlapping
    ax.set_xticks(range(classes), names, rotation=45 if long else 0, ha="left" if long else "center")
    ax.set_yticks(range(classes), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    bar = fig.colorbar(shown, ax=ax, shrink=0.8, label="share of the true class's images")
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda share, _: f"{100 * share:g}%"))
    correct, total = int(np.trace(counts)), int(counts.sum())
    fig.suptitle(f"{title}: {correct:,} of {total:,} right ({100 * correct / max(total, 1):.2f}%)")
    return fig


def misclassified_grid(
    images: np.ndarray, true, predicted, confidence: np.ndarray, total: int, wrong: int
) -> Figure:
    """The given mistakes (most confident first) as `true → predicted` (class names) with the predicted
    class's probability.

    `total` and `wrong` are the counts over the whole test set, for the title.
    """
    title = f"{wrong:,} of {total:,} test images misclassified"
    if not len(images):
        fig = Figure(figsize=(COLUMNS, 1.5), dpi=DPI)
        fig.suptitle(title)
        fig.text(0.5, 0.4, "No mistakes to show.", ha="center", va="center", fontsize=12)
        return fig
    title += f"; the {len(images)} most confident mistakes,\nas true → predicted (probability of the prediction)"
    true, predicted = [_short(t) for t in true], [_short(p) for p in predicted]
    captions = [
        f"{t} → {p} ({100 * float(c):.0f}%)" if c < 0.995 else f"{t} → {p} (>99%)"
        for t, p, c in zip(true, predicted, confidence)
    ]
    return _image_grid(images, captions, title, caption_colour="firebrick", title_lines=2)


def prediction_sheet(rows: list[tuple], total: int, columns: int = 4, side: int = SHEET_SIDE) -> Figure:
    """A contact sheet of predictions: each file as given beside its 28x28 form as the model saw it,
    under the predicted digit and its confidence (or the file's error), above the file's name.

    `rows` holds `(file name, original RGB uint8 or None, image [28, 28] as the model got it,
    predicted class name or None, confidence, error)` per file; `total` counts all files predicted, for the title.
    """
    pair_w, cell_h, pad = 2 * side + 8, side + 44, 10
    n_rows = math.ceil(len(rows) / columns)
    mosaic = np.full((n_rows * cell_h + pad, columns * (pair_w + pad) + pad, 3), 255, np.uint8)
    texts = []
    for i, (name, original, image, digit, confidence, error) in enumerate(rows):
        top, left = (i // columns) * cell_h + 24, (i % columns) * (pair_w + pad) + pad
        if original is not None:
            thumb = Image.fromarray(original).convert("RGB")
            thumb.thumbnail((side, side))
            y, x = top + (side - thumb.height) // 2, left + (side - thumb.width) // 2
            mosaic[top : top + side, left : left + side] = 235  # a light frame shows the original's extent
            mosaic[y : y + thumb.height, x : x + thumb.width] = np.asarray(thumb)
        if not error:
            seen = np.asarray(image, dtype=np.float32)
            span = float(seen.max() - seen.min()) or 1.0
            gray = np.round((seen - seen.min()) / span * 255).astype(np.uint8)
            big = np.asarray(Image.fromarray(gray).resize((side, side), Image.Resampling.NEAREST))
            mosaic[top : top + side, left + side + 8 : left + pair_w] = big[..., None]
        caption = f"error: {error.split(':', 1)[0]}" if error else f"{digit}  ({100 * confidence:.0f}%)"
        texts.append((left + pair_w / 2, top - 4, caption, "firebrick" if error else "black", 12, "bottom"))
        texts.append((left + pair_w / 2, top + side + 3, Path(name).name[:30], "0.35", 8, "top"))
    width = mosaic.shape[1] / DPI
    grid_height = mosaic.shape[0] / DPI
    title_height = 0.45
    fig = Figure(figsize=(width, grid_height + title_height), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, grid_height / fig.get_figheight()))
    ax.set_axis_off()
    ax.imshow(mosaic, interpolation="nearest")
    for x, y, text, colour, size, va in texts:
        ax.text(x, y, text, ha="center", va=va, fontsize=size, color=colour)
    shown = f"the first {len(rows)} of {total:,} images" if len(rows) < total else f"all {total:,} images"
    shown = "1 image" if total == 1 else shown
    fig.suptitle(f"Predictions ({shown}): as given | as the model saw it", y=1 - 6 / DPI / fig.get_figheight(), va="top")
    return fig


def _short(name, width: int = 5) -> str:
    """A class name that fits above a 28x28 image beside another one ("Sneaker" -> "Snea.")."""
    name = str(name)
    return name if len(name) <= width else name[: width - 1] + "."


def render(fig: Figure) -> np.ndarray:
    """The figure's pixels, RGB uint8 `[height, width, 3]` (width = inches × DPI)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def encode_png(rgb: np.ndarray) -> bytes:
    """The picture as a PNG file's bytes."""
    out = io.BytesIO()
    # Not optimize=True: it makes these pictures 1-2% smaller and their saving 4-6x slower.
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Writes the picture atomically: a reader (or a crash) never sees half a PNG at `path`."""
    return write_png(encode_png(rgb), path)


def write_png(png: bytes, path: str | Path) -> Path:
    """Writes an encoded PNG atomically."""
    path = Path(path)
    write_atomically(path, lambda out: out.write(png))
    return path


def _image_grid(images, captions: list[str], title: str, caption_colour: str = "black", title_lines: int = 1) -> Figure:
    """The images, COLUMNS to a row, each under its caption, pasted into one picture.

    One axes for the whole grid rather than one per digit: it renders ten times faster. Captions
    longer than a digit's "7 → 1 (93%)" get a smaller font, so that neighbours do not overlap.
    """
    size = 10 if max(map(len, captions), default=0) <= 14 else 7
    images = np.asarray(images, dtype=np.float32)
    images = images[:, 0] if images.ndim == 4 else images
    n, h, w = images.shape
    rows = math.ceil(n / COLUMNS)
    cell_w, cell_h = w + GAP, h + CAPTION
    mosaic = np.full((rows * cell_h + GAP // 2, COLUMNS * cell_w), np.nan, dtype=np.float32)  # NaN: a gap
    for i, image in enumerate(images):
        top, left = (i // COLUMNS) * cell_h + CAPTION, (i % COLUMNS) * cell_w + GAP // 2
        mosaic[top : top + h, left : left + w] = image
    width = COLUMNS * PX_PER_COLUMN / DPI
    grid_height = width * mosaic.shape[0] / mosaic.shape[1]
    title_height = (12 + 24 * title_lines) / DPI
    fig = Figure(figsize=(width, round((grid_height + title_height) * DPI) / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, grid_height / fig.get_figheight()))
    ax.set_axis_off()
    gray = colormaps["gray"].with_extremes(bad="white")  # the gaps between the digits
    ax.imshow(mosaic, cmap=gray, vmin=float(images.min()), vmax=float(images.max()), interpolation="nearest")
    for i, caption in enumerate(captions):
        x, y = (i % COLUMNS) * cell_w + cell_w / 2, (i // COLUMNS) * cell_h + CAPTION - 1
        ax.text(x, y, caption, ha="center", va="bottom", fontsize=size, color=caption_colour)
    fig.suptitle(title, y=1 - 6 / DPI / fig.get_figheight(), va="top")
    return fig
