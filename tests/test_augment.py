import pytest
import torch
import torch.nn.functional as F

from digits_lightning.augment import Augment, bicubic_weights, centre_line, dilate


def digits(n: int) -> torch.Tensor:
    """`n` white strokes on black, [n, 1, 28, 28] in [0, 1]: a bar and a ring-like box."""
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 6:22, 12:15] = 1.0
    x[:, :, 8:11, 8:20] = 0.7
    return x


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (2, 3, 9, 13)])
def test_dilate_and_erode_match_max_pool(shape):
    x = torch.rand(shape)
    assert torch.equal(dilate(x), F.max_pool2d(x, 3, 1, 1))
    assert torch.equal(-dilate(-x), -F.max_pool2d(-x, 3, 1, 1))


@pytest.mark.parametrize("size", [(28, 28), (20, 36)])
def test_bicubic_weights_upsample_as_interpolate_does(size):
    coarse = torch.randn(6, 2, 4, 4)
    expected = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    rows, cols = bicubic_weights(size[0], 4, coarse.device), bicubic_weights(size[1], 4, coarse.device)
    assert torch.allclose(torch.einsum("hi,ncij,wj->nchw", rows, coarse, cols), expected, atol=1e-5)


def test_images_left_undistorted_are_unchanged():
    x = digits(16)
    assert torch.allclose(Augment(p=0.0)(x.clone()), x, atol=1e-6)


def test_distortion_changes_every_digit_and_keeps_its_ink():
    torch.manual_seed(0)
    x = digits(64)
    y = Augment(p=1.0, **LOOKS)(x.clone())  # the looks of files (below) change the ink on purpose
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    changed = (y - x).abs().flatten(1).amax(dim=1) > 0.1
    assert changed.all()
    ink = y.flatten(1).sum(dim=1) / x.flatten(1).sum(dim=1)
    assert ink.min() > 0.3 and ink.max() < 2.5  # resized and re-inked, never erased or smeared out
    coords = torch.arange(28.0)

    def centre(images: torch.Tensor) -> torch.Tensor:
        mass = images[:, 0]
        total = mass.sum(dim=(1, 2))
        return torch.stack([(mass.sum(2) * coords).sum(1) / total, (mass.sum(1) * coords).sum(1) / total], dim=1)

    assert (centre(y) - centre(x)).abs().max() < 6  # moved a few pixels (shift, rotation, scale), never off the field


STILL = dict(p=1.0, rotation=0, scale=0, aspect=0, shear=0, shift=0, elastic=0, thickness=0)  # no geometric change
LOOKS = dict(bold=0.0, low_res=0.0, binary=0.0, square=0.0, thin=0.0)  # and no look but the one a test names


def ink_box(image: torch.Tensor, level: float = 0.3) -> tuple[int, int]:
    ys, xs = torch.nonzero(image[0] > level, as_tuple=True)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def test_square_stretches_the_ink_box_to_fill_20x20():
    x = digits(4)  # ink box 16 tall, 12 wide
    y = Augment(**{**STILL, **LOOKS, "square": 1.0})(x.clone())
    for image in y:
        height, width = ink_box(image)
        assert 19 <= height <= 22 and 19 <= width <= 22, (height, width)


def test_bold_draws_with_a_pen_two_pixels_wider():
    x = digits(4)
    assert torch.allclose(Augment(**{**STILL, **LOOKS, "bold": 1.0})(x.clone()), dilate(x).clamp(0, 1), atol=1e-5)


def test_binary_leaves_only_black_and_white():
    y = Augment(**{**STILL, **LOOKS, "binary": 1.0})(digits(4))
    assert set(y.unique().tolist()) <= {0.0, 1.0}


def test_low_resolution_blurs_thin_strokes_and_keeps_full_strength():
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 4:24, 14] = 1.0  # a bar one pixel wide
    y = Augment(**{**STILL, **LOOKS, "low_res": 1.0})(x.clone())
    assert torch.allclose(y.flatten(1).amax(1), torch.ones(8))  # re-stretched to full white, as preprocessing does
    assert ((y > 0.05).flatten(1).sum(1) > 2 * 20).all()  # spread over more than the bar's 20 pixels


def test_looks_apply_only_to_the_share_asked_for():
    torch.manual_seed(0)
    x = digits(2000)
    y = Augment(**{**STILL, **LOOKS, "binary": 0.25})(x.clone())
    changed = (y - x).abs().flatten(1).amax(1) > 0.1
    assert 0.2 < changed.float().mean() < 0.3


def pieces(mask: torch.Tensor, diagonal: bool = False) -> int:
    """How many separate regions `mask` holds, joined through 4 neighbours (8 with `diagonal`)."""
    steps = [(1, 0), (-1, 0), (0, 1), (0, -1)] + ([(1, 1), (1, -1), (-1, 1), (-1, -1)] if diagonal else [])
    seen, count = torch.zeros_like(mask), 0
    for y, x in mask.nonzero().tolist():
        if seen[y, x]:
            continue
        count += 1
        stack = [(y, x)]
        while stack:
            a, b = stack.pop()
            if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and mask[a, b] and not seen[a, b]:
                seen[a, b] = True
                stack += [(a + dy, b + dx) for dy, dx in steps]
    return count


def holes(mask: torch.Tensor) -> int:
    """Regions of background not joined to the image's border (through the padding): a ring has one."""
    return pieces(F.pad(~mask, (1, 1, 1, 1), value=True)) - 1


def test_the_centre_line_of_a_bar_is_one_pixel_wide_along_its_middle():
    x = torch.zeros(1, 1, 28, 28)
    x[..., 12:17, 4:24] = 1.0  # five rows thick
    line = centre_line(x)[0, 0] > 0
    assert line.sum(0)[8:20].eq(1).all()  # one pixel in every column away from the ends
    assert line[14, 8:20].all()  # on the middle row
    assert not line[:12].any() and not line[17:].any()


def test_the_centre_line_keeps_a_ring_closed_and_a_stroke_in_one_piece():
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    r = ((ys - 13.5) ** 2 + (xs - 13.5) ** 2).sqrt()
    ring = ((r > 5) & (r < 9)).float()  # a thick "0"
    hook = torch.zeros(28, 28)
    hook[4:24, 12:16] = 1.0
    hook[20:24, 6:16] = 1.0  # an "L" four pixels thick
    line = centre_line(torch.stack([ring, hook])[:, None])[:, 0] > 0
    assert holes(ring > 0) == holes(line[0]) == 1
    assert line[0].sum() < 0.4 * ring.sum() and line[1].sum() < 0.4 * hook.sum()
    assert holes(line[1]) == 0
    assert pieces(line[1], diagonal=True) == 1  # in one piece, through 8 neighbours


def test_thin_redraws_every_stroke_about_two_pixels_wide_at_full_strength():
    x = digits(4)  # an upright bar 3 pixels wide, crossed by one 3 pixels tall
    y = Augment(**{**STILL, **LOOKS, "thin": 1.0})(x.clone())
    for image in y[:, 0]:
        below = image[12:20]  # the upright bar below the cross-bar, row by row:
        assert (below == 1.0).sum(1).eq(1).all()  # one pixel at full strength...
        assert torch.allclose(below.sum(1), torch.full((8,), 2.0))  # ...and half of one on either side
