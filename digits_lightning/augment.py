"""Random distortions of whole training batches on the device, to make the model robust to how
people write: slant, size, proportions, position, wobble and pen width (the references' future work),
and to how their files look once preprocessed: bold pens, blurry low-resolution upscales,
binarised scans, digits stretched to fill a square and thin pens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from digits_lightning.errors import SettingError


@dataclass
class Augment:
    """Each field is the largest change drawn (uniformly, in both directions) per image."""

    p: float = 0.8  # share of images distorted at all; the rest pass unchanged
    rotation: float = 12.0  # degrees
    scale: float = 0.15  # relative size
    aspect: float = 0.2  # relative width against height
    shear: float = 0.15
    shift: float = 2.0  # pixels
    elastic: float = 1.0  # pixels of smooth local displacement
    thickness: float = 0.3  # chance of a thicker pen plus chance of a thinner one
    # Shares of the distorted images given each look of a file (independently of one another),
    # chosen on files made from the validation digits (benchmarks/field_corpus.py, docs/field_test.md:
    # the other looks, added to this one, scored the same there):
    bold: float = 0.0  # a pen 2 pixels wider (a full 3x3 dilation)
    low_res: float = 0.0  # reduced to 7-14 pixels a side and upscaled back (bilinear): blurry
    binary: float = 0.0  # binarised at half strength, as a black-and-white scan
    square: float = 0.0  # the ink's box stretched to fill the 20x20 box, proportions lost
    thin: float = 0.0  # reduced to its centre line and redrawn 2 pixels wide, as a thin pen's file is

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise SettingError(f"data.augment.{name} must be at least 0, got {value}")
        for name in ("p", "thickness", "bold", "low_res", "binary", "square", "thin"):
            if getattr(self, name) > 1:
                raise SettingError(f"data.augment.{name} is a share of the images: at most 1, got {getattr(self, name)}")
        for name in ("scale", "aspect"):
            if getattr(self, name) >= 1:
                raise SettingError(f"data.augment.{name} must be below 1 (1 shrinks digits to nothing), got {getattr(self, name)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: float `[N, 1, H, W]` in [0, 1], white ink on black; returns the same shape."""
        n, _, h, w = x.shape
        dev = x.device
        on = (torch.rand(n, device=dev) < self.p).float()

        def draw(limit: float) -> torch.Tensor:
            return (torch.rand(n, device=dev) * 2 - 1) * limit * on

        angle = draw(math.radians(self.rotation))
        size = 1 + draw(self.scale)
        stretch = 1 + draw(self.aspect)
        sx, sy = size * stretch.sqrt(), size / stretch.sqrt()
        shear = draw(self.shear)
        cos, sin = angle.cos(), angle.sin()
        # The sampling grid maps output to input coordinates: rotate, shear, then shrink by the scale.
        # Built by broadcasting: F.affine_grid's batched matrix product is 10x slower on a CPU.
        xs = ((torch.arange(w, device=dev) * 2 + 1) / w - 1).view(1, 1, w)  # pixel centres in [-1, 1]
        ys = ((torch.arange(h, device=dev) * 2 + 1) / h - 1).view(1, h, 1)

        def row(a: torch.Tensor, b: torch.Tensor, shift: float) -> torch.Tensor:
            return a.view(n, 1, 1) * xs + b.view(n, 1, 1) * ys + draw(2 * shift).view(n, 1, 1)

        grid = torch.stack(
            [row(cos / sx, (cos * shear - sin) / sy, self.shift / w), row(sin / sx, (sin * shear + cos) / sy, self.shift / h)],
            dim=-1,
        )
        if self.elastic > 0:  # a smooth field: random displacements on a 4x4 grid, upsampled bicubically
            coarse = torch.randn(n, 2, 4, 4, device=dev) * (2 * self.elastic / h) * on.view(n, 1, 1, 1)
            grid = grid + torch.einsum("hi,ncij,wj->nhwc", bicubic_weights(h, 4, dev), coarse, bicubic_weights(w, 4, dev))
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        if self.thickness > 0:
            pen = torch.where(on > 0, torch.rand(n, device=dev), 1.0).view(n, 1, 1, 1)
            thicker, thinner = dilate(x), -dilate(-x)
            # Half-strength dilation/erosion: a full 3x3 step is too much for 28x28 strokes.
            x = torch.where(pen < self.thickness / 2, (x + thicker) / 2, x)
            x = torch.where((pen >= self.thickness / 2) & (pen < self.thickness), (x + thinner) / 2, x)

        def chosen(share: float) -> torch.Tensor:
            return ((torch.rand(n, device=dev) < share).float() * on).view(n, 1, 1, 1) > 0

        def only(pick: torch.Tensor, change) -> torch.Tensor:
            # The costlier looks are computed for the few images drawn, not the whole batch.
            index = pick.view(n).nonzero().squeeze(1)
            return x.index_copy(0, index, change(x.index_select(0, index))) if index.numel() else x

        def blur(side: int):
            def change(images: torch.Tensor) -> torch.Tensor:
                small = F.interpolate(images, size=(side, side), mode="area")
                blurry = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
                return blurry / blurry.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1, 1)  # preprocessing re-stretches

            return change

        if self.square > 0:
            x = only(chosen(self.square), lambda images: fill_box(images.clamp(0, 1)))
        if self.bold > 0:
            x = torch.where(chosen(self.bold), dilate(x), x)
        if self.thin > 0:
            x = only(chosen(self.thin), thin_pen)
        if self.low_res > 0:
            side = int(torch.randint(7, 15, (1,)))  # one size per batch: F.interpolate takes one
            x = only(chosen(self.low_res), blur(side))
        if self.binary > 0:
            x = torch.where(chosen(self.binary), (x > 0.5).float(), x)
        return x.clamp_(0, 1)


# The two helpers below compute what F.max_pool2d(x, 3, 1, 1) and F.interpolate(mode="bicubic") do,
# in a form a CPU runs 20x and 13x faster on these one-channel 28x28 batches: on 2 cores the library
# ops take 2.0 and 1.4 ms per batch of 256, these 0.1 ms each, and the whole distortion about 2 ms.


def dilate(x: torch.Tensor) -> torch.Tensor:
    """The maximum of each 3x3 neighbourhood of `[N, C, H, W]` (edges padded out), as two 1-D passes."""
    p = F.pad(x, (1, 1, 1, 1), value=-math.inf)
    rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def centre_line(x: torch.Tensor) -> torch.Tensor:
    """The ink (over half strength) of `[N, 1, H, W]` thinned to lines one pixel wide (Zhang-Suen:
    outer pixels peeled off in two alternating passes, never one that holds a line together).

    Each pixel's 8 neighbours are read as one byte (a 3x3 convolution with powers of two), and a
    table of the 256 bytes says whether it is peeled: a few operations per pass, where the rule
    written out pixel-wise takes some fifty, which on a CPU cost more than the rest of the batch's
    distortion."""
    m = (x > 0.5).float()
    weights = _NEIGHBOUR_BITS.to(x.device)
    tables = _PEEL.to(x.device)
    for _ in range(max(x.shape[-2:])):
        removed = False
        for table in tables:
            code = F.conv2d(m, weights, padding=1).long()
            peel = table[code] & (m > 0)
            if peel.any():
                m = m.masked_fill(peel, 0.0)
                removed = True
        if not removed:
            break
    return m


# The 8 neighbours clockwise from north (N, NE, E, SE, S, SW, W, NW) as bits 0-7 of a byte.
_NEIGHBOUR_BITS = torch.tensor([[128.0, 1, 2], [64, 0, 4], [32, 16, 8]]).view(1, 1, 3, 3)


def _peel_tables() -> torch.Tensor:
    """`[2, 256]`: whether Zhang-Suen's first and second pass peel a pixel with these neighbours:
    2-6 of them inked, one gap-to-ink crossing around it (so it is an end or an edge, not a link),
    and on the pass's sides (the first: south or east, or the north-west corner; the second: the
    opposite)."""
    bits = (torch.arange(256).view(-1, 1) >> torch.arange(8)) & 1
    count = bits.sum(1)
    crossings = ((1 - bits) * bits.roll(-1, 1)).sum(1)
    edge = (count >= 2) & (count <= 6) & (crossings == 1)
    n = bits.T
    first = (n[0] * n[2] * n[4] == 0) & (n[2] * n[4] * n[6] == 0)
    second = (n[0] * n[2] * n[6] == 0) & (n[0] * n[4] * n[6] == 0)
    return torch.stack([edge & first, edge & second])


_PEEL = _peel_tables()


def thin_pen(x: torch.Tensor) -> torch.Tensor:
    """Each digit as a thin pen draws it once preprocessing has brought the pen to MNIST's width:
    its centre line, at full strength, with half-strength pixels beside it (about 2 pixels wide)."""
    line = centre_line(x)
    return (line + dilate(line)) / 2


def fill_box(x: torch.Tensor, level: float = 0.3, box: int = 20) -> torch.Tensor:
    """Each image of `[N, 1, H, W]` with its ink's bounding box stretched to a `box` x `box` square
    in the middle of the field (bilinear), as a digit stretched to fill a square is preprocessed."""
    n, _, h, w = x.shape
    ink = x[:, 0] > level
    rows, cols = ink.any(2).float(), ink.any(1).float()
    top, left = rows.argmax(1).float(), cols.argmax(1).float()
    bottom, right = h - rows.flip(1).argmax(1).float(), w - cols.flip(1).argmax(1).float()
    empty = rows.sum(1) == 0
    top, left = torch.where(empty, 0.0, top), torch.where(empty, 0.0, left)
    bottom, right = torch.where(empty, float(h), bottom), torch.where(empty, float(w), right)
    # Output pixel centres (in pixel units of the field) -> input positions, then to [-1, 1].
    oy = torch.arange(h, device=x.device).float() + 0.5 - (h - box) / 2
    ox = torch.arange(w, device=x.device).float() + 0.5 - (w - box) / 2
    ys = top.view(n, 1) + oy.view(1, h) * ((bottom - top) / box).view(n, 1)
    xs = left.view(n, 1) + ox.view(1, w) * ((right - left) / box).view(n, 1)
    grid = torch.stack(torch.broadcast_tensors(xs.view(n, 1, w) * 2 / w - 1, ys.view(n, h, 1) * 2 / h - 1), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def bicubic_weights(size: int, coarse: int, device: torch.device) -> torch.Tensor:
    """`[size, coarse]`: the weights with which F.interpolate's bicubic mode (align_corners=False)
    upsamples `coarse` values to `size`; the 2-D upsampling is this matrix applied to rows and columns."""
    basis = torch.eye(coarse, device=device).view(coarse, 1, coarse, 1)
    return F.interpolate(basis, size=(size, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].T
