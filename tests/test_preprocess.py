"""`preprocess`: real image files of every mode and format in, MNIST's 28x28 convention out, and
one clear `ImageError` (kind and fix) for each kind of file that cannot become a digit."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from digits_lightning.preprocess import MAX_PIXELS, ImageError, load_image, preprocess_file, to_mnist
from tests.helpers import draw, mnist_convention, render_digits, transparent


def ink_box(digit: np.ndarray, level: int = 0) -> tuple[int, int]:
    """Height and width of the box holding the pixels brighter than `level`."""
    ys, xs = np.nonzero(digit > level)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def centre_of_mass(digit: np.ndarray) -> tuple[float, float]:
    mass = digit.astype(np.float64)
    total = mass.sum()
    return float((mass.sum(axis=1) * np.arange(28)).sum() / total), float((mass.sum(axis=0) * np.arange(28)).sum() / total)


SAME = 12  # `difference` of two renderings of one digit; a misplaced or misscaled digit differs by 20-45


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in gray levels (0-255), allowing a shift of one pixel either way:
    MNIST's own centring rounds the centre of mass to a whole pixel, so the same digit drawn at
    another place or size may legitimately land one pixel over."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return min(float(np.abs(np.roll(a, (dy, dx), (0, 1)) - b).mean()) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def assert_mnist_digit(digit: np.ndarray) -> None:
    """uint8 28x28, white ink on a black background, in a 20x20 box, centred by centre of mass."""
    assert digit.dtype == np.uint8 and digit.shape == (28, 28)
    assert np.median(digit) == 0 and digit[[0, 0, -1, -1], [0, -1, 0, -1]].max() == 0  # (a digit may touch a side, as in MNIST)
    assert digit.max() == 255
    assert max(ink_box(digit)) in (19, 20), ink_box(digit)
    cy, cx = centre_of_mass(digit)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1, (cy, cx)


def expected(text: str, size: int = 200) -> np.ndarray:
    """What `draw(text, size)` must become."""
    return mnist_convention(255 - np.asarray(draw(text, size)))


@pytest.fixture(scope="module")
def three() -> np.ndarray:
    """The reference every file format must give: a "3" in MNIST's convention."""
    return expected("3")


# -- modes and formats ------------------------------------------------------------------------


def palette_with_transparency(image: Image.Image) -> Image.Image:
    """Index 0 is transparent (and black, so ignoring the transparency loses the digit)."""
    levels = np.asarray(image) // 64  # 4 gray levels: 0 ink ... 3 paper
    index = np.where(levels == 3, 0, levels + 1).astype(np.uint8)  # paper -> transparent index 0
    p = Image.fromarray(index, "L").convert("P")
    p.putpalette([0, 0, 0] + [v for i in range(3) for v in (i * 80,) * 3] + [0, 0, 0] * 252)
    p.info["transparency"] = 0
    return p


def colour(image: Image.Image) -> Image.Image:
    """Blue ink on cream paper."""
    return ImageOps.colorize(image, black=(20, 40, 140), white=(255, 250, 230))


def cmyk(image: Image.Image) -> Image.Image:
    return colour(image).convert("CMYK")


def sixteen_bit(image: Image.Image) -> Image.Image:
    """Paper at 60000 and ink at 4000 of 65535: a conversion that clips to 8 bits sees all white."""
    values = 4000 + (np.asarray(image, np.float64) / 255 * 56000)
    return Image.fromarray(values.astype(np.uint16))  # mode "I;16"


def int32(image: Image.Image) -> Image.Image:
    return Image.fromarray((np.asarray(image, np.int32) * 200 + 3000).astype(np.int32), "I")


def float32(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image, np.float32), "F")  # 0-255, as Pillow's own "F" conversion


CASES = {  # name: (convert the "L" drawing, file suffix, the mode Pillow must read back)
    "L.png": (lambda im: im, ".png", "L"),
    "RGB.png": (colour, ".png", "RGB"),
    "RGB.tiff": (colour, ".tiff", "RGB"),
    "RGB.jpg": (colour, ".jpg", "RGB"),
    "L.jpg": (lambda im: im, ".jpg", "L"),
    "RGB.bmp": (colour, ".bmp", "RGB"),
    "RGB.webp": (colour, ".webp", "RGB"),
    "RGBA.png": (lambda im: transparent(im, "RGBA"), ".png", "RGBA"),
    "RGBA.webp": (lambda im: transparent(im, "RGBA"), ".webp", "RGBA"),
    "LA.png": (lambda im: transparent(im, "LA"), ".png", "LA"),
    "P.png": (lambda im: colour(im).quantize(16), ".png", "P"),
    "P.gif": (lambda im: colour(im).quantize(16), ".gif", "P"),
    "P-transparency.png": (palette_with_transparency, ".png", "P"),
    "P-transparency.gif": (palette_with_transparency, ".gif", "P"),
    "I;16.png": (sixteen_bit, ".png", "I;16"),
    "I.tiff": (int32, ".tiff", "I"),
    "F.tiff": (float32, ".tiff", "F"),
    "CMYK.jpg": (cmyk, ".jpg", "CMYK"),
    "1.png": (lambda im: im.convert("1", dither=Image.Dither.NONE), ".png", "1"),
    "1.bmp": (lambda im: im.convert("1", dither=Image.Dither.NONE), ".bmp", "1"),
    "1.tiff": (lambda im: im.convert("1", dither=Image.Dither.NONE), ".tiff", "1"),
    "L.tiff": (lambda im: im, ".tiff", "L"),
}


@pytest.mark.parametrize("case", CASES)
def test_every_mode_and_format_reads_as_the_same_digit(case, tmp_path, three):
    convert, suffix, mode = CASES[case]
    path = tmp_path / f"digit{suffix}"
    convert(draw("3")).save(path)
    with Image.open(path) as saved:
        assert saved.mode == mode  # the file really is of the mode the case is about
    digit = preprocess_file(path)
    assert_mnist_digit(digit)
    assert difference(digit, three) < SAME


def test_float_image_in_unit_range(tmp_path, three):
    """Float TIFFs from scientific tools usually hold 0.0-1.0, not 0-255."""
    path = tmp_path / "unit.tiff"
    Image.fromarray(np.asarray(draw("3"), np.float32) / 255, "F").save(path)
    digit = preprocess_file(path)
    assert_mnist_digit(digit)
    assert difference(digit, three) < SAME


def test_float_image_with_missing_values(tmp_path, three):
    """NaN and infinite pixels (no data, in a float TIFF from a scientific tool) are background:
    the digit reads as without them (they crashed Otsu's histogram once), and an image of nothing
    else is blank."""
    values = 1 - three.astype(np.float32) / 255
    values[:4, :4], values[-3:, 10:20], values[5, -5:] = np.nan, np.inf, -np.inf
    Image.fromarray(values, "F").save(tmp_path / "gaps.tif")
    assert difference(preprocess_file(tmp_path / "gaps.tif"), three) < SAME
    Image.fromarray(np.full((40, 40), np.nan, np.float32), "F").save(tmp_path / "empty.tif")
    with pytest.raises(ImageError, match="no digit found"):
        preprocess_file(tmp_path / "empty.tif")


def test_multi_frame_gif_uses_the_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    first, *rest = [draw(d).convert("P") for d in "471"]
    first.save(path, save_all=True, append_images=rest, duration=100)
    with Image.open(path) as saved:
        assert saved.n_frames == 3
    digit = preprocess_file(path)
    assert difference(digit, expected("4")) < SAME < difference(digit, expected("7"))


def test_multi_page_tiff_uses_the_first_page(tmp_path):
    path = tmp_path / "pages.tiff"
    draw("2").save(path, save_all=True, append_images=[draw("8"), Image.new("L", (200, 200), 255)])
    with Image.open(path) as saved:
        assert saved.n_frames == 3
    digit = preprocess_file(path)
    assert difference(digit, expected("2")) < SAME < difference(digit, expected("8"))


@pytest.mark.parametrize(
    ("orientation", "stored"), [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)]
)
@pytest.mark.parametrize("text", ["1", "7"])
def test_exif_orientation_is_applied(tmp_path, orientation, stored, text):
    """A phone stores the sensor's pixels and says in EXIF how to turn them upright."""
    upright = draw(text, size=240)
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(stored).save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        assert raw.getexif()[0x0112] == orientation  # as saved: turned, until the tag is applied
    digit = preprocess_file(path)
    height, width = ink_box(digit, 64)
    assert height > width
    assert difference(digit, expected(text, size=240)) < SAME


# -- what comes out -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", list("0123456789"))
def test_output_follows_mnist_convention(text):
    digit = to_mnist(draw(text))
    assert_mnist_digit(digit)
    assert difference(digit, expected(text)) < SAME


@pytest.mark.parametrize("text", ["0", "3", "7"])
def test_polarity_does_not_matter(text):
    dark_on_light = to_mnist(draw(text))
    light_on_dark = to_mnist(draw(text, ink=255, paper=0))
    assert np.abs(dark_on_light.astype(int) - light_on_dark).mean() < 2


def test_gray_ink_on_gray_paper_is_stretched_to_full_contrast(three):
    digit = to_mnist(draw("3", ink=90, paper=170))
    assert_mnist_digit(digit)
    assert difference(digit, three) < SAME


@pytest.mark.parametrize("text", ["2", "3", "5", "8"])
def test_position_and_size_do_not_matter(text):
    small = draw(text, size=150)
    reference = to_mnist(small)
    page = Image.new("L", (640, 480), 255)
    page.paste(small, (470, 20))  # near the top right corner of a page four times its size
    off_centre = to_mnist(page)
    upscaled = to_mnist(small.resize((600, 600), Image.Resampling.BICUBIC))
    for digit in (off_centre, upscaled):
        assert_mnist_digit(digit)
        assert difference(digit, reference) < SAME


@pytest.mark.parametrize("text", ["3", "7"])
@pytest.mark.parametrize("margin", [0, 20, 40])
def test_a_photo_of_a_sheet_on_a_table_reads_the_sheet(text, margin):
    # Dark table around a sheet of paper, the sheet a little off-centre; at margin 40 the table
    # covers more of the photo than the sheet does.
    photo = Image.new("L", (300, 300), 45)
    photo.paste(draw(text, size=300 - 2 * margin, ink=30, paper=225), (margin, margin + 8))
    digit = to_mnist(photo)
    assert_mnist_digit(digit)
    assert difference(digit, expected(text)) < SAME


@pytest.mark.parametrize("text", ["3", "7"])
@pytest.mark.parametrize("line", [235, 200, 160])
def test_the_lines_of_ruled_paper_are_erased(text, line):
    page = draw(text, size=240, ink=20, paper=250).convert("RGB")
    pen = ImageDraw.Draw(page)
    for y in range(15, 240, 28):  # light-blue rules across the sheet, under and through the digit
        pen.line([(0, y), (240, y)], fill=(line, line, 255), width=2)
    digit, clean = to_mnist(page), expected(text, size=240)
    assert_mnist_digit(digit)
    assert difference(digit, clean) < 6  # only the thin gaps where the rules crossed the strokes
    near = np.asarray(Image.fromarray(clean).filter(ImageFilter.MaxFilter(5))) > 0
    assert digit[~near].sum() < 20  # no streaks of the rules left beside the digit


@pytest.mark.parametrize("text", ["3", "9"])
def test_the_lines_of_squared_paper_are_erased(text):
    page = draw(text, size=240, ink=20, paper=250)
    pen = ImageDraw.Draw(page)
    for at in range(12, 240, 24):  # a grid of gray rules, across and down the sheet and the digit
        pen.line([(0, at), (240, at)], fill=170, width=3)
        pen.line([(at, 0), (at, 240)], fill=170, width=3)
    digit, clean = to_mnist(page), expected(text, size=240)
    assert_mnist_digit(digit)
    assert difference(digit, clean) < SAME  # the same digit, but for the gaps where the rules crossed it
    near = np.asarray(Image.fromarray(clean).filter(ImageFilter.MaxFilter(5))) > 0
    assert digit[~near].sum() < 20 * 255  # no rules left beside the digit


def test_ruled_paper_without_a_digit_is_blank():
    page = Image.new("L", (200, 200), 250)
    for y in range(10, 200, 25):
        ImageDraw.Draw(page).line([(0, y), (200, y)], fill=120, width=2)
    with pytest.raises(ImageError) as err:
        to_mnist(page)
    assert err.value.kind == "blank"


def test_a_single_bar_across_a_tight_crop_is_kept():
    # A "7" cropped to its ink: its bar runs across the whole image, and must stay.
    seven = np.asarray(draw("7", size=200))
    ys, xs = np.nonzero(seven < 128)
    tight = Image.fromarray(seven[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    digit = to_mnist(tight)
    assert_mnist_digit(digit)
    top = np.nonzero(digit.max(axis=1))[0][0]
    assert (digit[top : top + 3] > 128).sum(axis=1).max() >= 8  # the bar: a wide run of ink at the top



@pytest.mark.parametrize("text", ["3", "7", "4", "2"])
@pytest.mark.parametrize("inset, width", [(12, 2), (24, 4)])
def test_the_box_of_a_forms_cell_around_the_digit_is_erased(text, inset, width):
    page = draw(text, size=240, ink=20, paper=250)
    ImageDraw.Draw(page).rectangle([inset, inset, 239 - inset, 239 - inset], outline=20, width=width)
    digit, clean = to_mnist(page), expected(text, size=240)
    assert_mnist_digit(digit)
    assert difference(digit, clean) < SAME  # the digit alone, scaled as if there were no box


@pytest.mark.parametrize("text", ["3", "5", "9"])
def test_the_line_a_digit_is_written_on_is_erased(text):
    page = draw(text, size=240, ink=20, paper=250)
    ImageDraw.Draw(page).line([(20, 222), (220, 222)], fill=40, width=3)  # below the digit, apart from it
    digit, clean = to_mnist(page), expected(text, size=240)
    assert_mnist_digit(digit)
    assert difference(digit, clean) < SAME


@pytest.mark.parametrize("text", ["3", "5", "9", "7"])
@pytest.mark.parametrize("width", [2, 3])
def test_the_line_a_digit_is_written_on_is_erased_where_the_digit_touches_it(text, width):
    page = draw(text, size=240, ink=20, paper=250)
    bottom = int(np.nonzero(np.asarray(page).min(axis=1) < 128)[0][-1])
    ImageDraw.Draw(page).line([(20, bottom), (220, bottom)], fill=40, width=width)  # the digit sits on it
    digit, clean = to_mnist(page), expected(text, size=240)
    assert_mnist_digit(digit)
    assert difference(digit, clean) < SAME


@pytest.mark.parametrize("text", ["3", "8"])
@pytest.mark.parametrize("dots", [[(30, 200)], [(25, 30), (215, 120)], [(120, 228), (20, 110), (225, 20)]])
def test_specks_of_dust_around_the_digit_are_left_out(text, dots):
    page = draw(text, size=240, ink=20, paper=250)
    for x, y in dots:  # a pen's dots or dust, 5 pixels across, apart from the digit
        ImageDraw.Draw(page).ellipse([x - 2, y - 2, x + 2, y + 2], fill=20)
    digit, clean = to_mnist(page), expected(text, size=240)
    assert_mnist_digit(digit)
    assert difference(digit, clean) < SAME


def test_a_digits_own_separate_stroke_is_no_speck():
    # A "5" written in two strokes: its bar, apart from the rest, is a good share of the ink.
    five = strokes(200, (70, 40, 150, 40), (70, 62, 70, 100), (70, 100, 140, 110), (140, 110, 140, 150), (140, 150, 60, 165), width=12)
    ink = np.asarray(five.point(lambda v: 250 - v))
    assert difference(to_mnist(five), mnist_convention(ink)) < SAME


@pytest.mark.parametrize("text", ["2", "6"])
@pytest.mark.parametrize("frame", [(20, 20, 20, 20), (60, 10, 10, 10), (30, 0, 0, 40)])
def test_a_dark_canvas_in_a_light_window_is_read_as_light_ink_on_dark(text, frame):
    # A screenshot of a drawing app: a white pen on its black canvas, inside the app's light window
    # (frame: top, right, bottom, left margins; a screenshot may cut the window on some sides).
    canvas = draw(text, size=200, ink=250, paper=15)
    top, right, bottom, left = frame
    shot = Image.new("L", (200 + left + right, 200 + top + bottom), 235)
    shot.paste(canvas, (left, top))
    digit = to_mnist(shot)
    assert_mnist_digit(digit)
    assert difference(digit, mnist_convention(np.asarray(canvas) - 15)) < SAME


@pytest.mark.parametrize("text", ["5", "8"])
@pytest.mark.parametrize("share", [0.003, 0.01])  # of the pixels: up to about 1 % (denser noise leaves clusters)
def test_salt_and_pepper_noise_is_removed(text, share):
    # A fax or an old scan: single pixels gone black or white all over the page.
    page = np.asarray(draw(text, size=240, ink=20, paper=250)).copy()
    hit = np.random.default_rng(0).random(page.shape)
    page[hit < share / 2], page[hit > 1 - share / 2] = 0, 255
    digit = to_mnist(Image.fromarray(page))
    assert_mnist_digit(digit)
    assert difference(digit, expected(text, size=240)) < SAME


@pytest.mark.parametrize("text", "0347")
@pytest.mark.parametrize("sigma", [15, 25, 35])
def test_a_digit_on_grainy_paper_is_read(text, sigma):
    """A photo taken in dim light: gray paper, the pen, and Gaussian grain of `sigma` gray levels on
    every pixel. Above about 20 levels the grain passed for ink, and the digit's box became the page."""
    clean = Image.new("L", (240, 200), 255)
    clean.paste(draw(text, size=150), (50, 30))
    page = 60 + 150 * np.asarray(clean, np.float64) / 255 + np.random.default_rng(sigma).normal(0, sigma, (200, 240))
    assert_reads_as_clean(Image.fromarray(np.clip(page, 0, 255).astype(np.uint8)), clean)


def strokes(size: int, *lines: tuple[int, int, int, int], width: int = 6) -> Image.Image:
    """A digit drawn as straight strokes (x0, y0, x1, y1), dark on light."""
    page = Image.new("L", (size, size), 250)
    for line in lines:
        ImageDraw.Draw(page).line(line, fill=20, width=width)
    return page


@pytest.mark.parametrize(
    "name, page",
    [
        ("a 7: its bar ends where its stem begins", strokes(200, (40, 40, 160, 40), (160, 40, 80, 170))),
        ("a 4 whose stem rises past its arm", strokes(200, (60, 50, 50, 120), (50, 120, 150, 120), (130, 20, 130, 180))),
        ("a 4 drawn open, its bar short of the stem", strokes(200, (60, 50, 50, 120), (50, 120, 124, 120), (130, 20, 130, 180))),
        ("a 1 standing on its base", strokes(200, (100, 30, 100, 170), (50, 170, 150, 170))),
        ("a 0 squared to its box", strokes(120, (20, 30, 20, 90), (100, 30, 100, 90), (20, 30, 60, 10), (60, 10, 100, 30), (20, 90, 60, 110), (60, 110, 100, 90))),
    ],
)
def test_a_digits_own_bars_and_stems_are_not_taken_for_a_box_or_a_line(name, page):
    ink = np.asarray(page.point(lambda v: 250 - v))  # white on black, the paper at 0
    assert difference(to_mnist(page), mnist_convention(ink)) < SAME, name  # every stroke kept

def assert_no_blotches(digit: np.ndarray, reference: np.ndarray) -> None:
    """No background blotches: nothing lit beyond a pixel around the clean digit's ink."""
    around = np.asarray(Image.fromarray(reference).filter(ImageFilter.MaxFilter(5)))
    assert digit[around == 0].max(initial=0) < 32, np.argwhere((digit >= 32) & (around == 0))


def assert_reads_as_clean(image: Image.Image, clean: Image.Image, blotches: bool = True) -> None:
    """`image` (the clean drawing spoilt) reads as `clean` does: an MNIST-like digit, the same one,
    and (with `blotches`) nothing lit around its ink."""
    reference = to_mnist(clean)
    digit = to_mnist(image)
    assert_mnist_digit(digit)
    assert difference(digit, reference) < SAME
    if blotches:
        assert_no_blotches(digit, reference)


def lit_unevenly(image: Image.Image, darkest: int, noise: float, seed: int = 0) -> Image.Image:
    """The drawing under light that falls from 255 to `darkest` across the page, with paper noise."""
    rng = np.random.default_rng(seed)
    h, w = image.size[1], image.size[0]
    reflectance = np.asarray(image, np.float64) / 255
    light = np.linspace(255, darkest, w)[None, :] * np.linspace(1, 0.9, h)[:, None]
    page = light * (0.08 + 0.92 * reflectance) + rng.normal(0, noise, (h, w))
    return Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("text", ["0", "3", "4", "8"])
@pytest.mark.parametrize(("darkest", "noise"), [(255, 6), (200, 0), (120, 0), (120, 8)])
def test_uneven_lighting_and_paper_noise_are_removed(text, darkest, noise):
    clean = draw(text, size=300)
    assert_reads_as_clean(lit_unevenly(clean, darkest, noise), clean)


def in_shadow(clean: Image.Image, inside: np.ndarray, depth: float, blur: float = 3) -> Image.Image:
    """`clean` with the light `depth` lower where `inside` holds (the shadow's edge blurred by `blur`
    pixels), and paper noise."""
    shade = np.asarray(Image.fromarray((255 * inside).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur)), np.float64) / 255
    page = np.asarray(clean, np.float64) * (1 - depth * shade) + np.random.default_rng(0).normal(0, 3, inside.shape)
    return Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(("text", "side"), [(t, s) for t in "0348" for s in ("left", "top", "corner")])
def test_a_shadow_across_the_page_is_not_taken_for_ink(text, side):
    """A hand or a phone casting a soft-edged shadow over a third of the sheet (and of the digit),
    the shadowed paper half as light: darker than the paper around it, far lighter than the ink."""
    clean = Image.new("L", (480, 480), 255)
    clean.paste(draw(text, size=300), (90, 90))
    w, h = clean.size
    ys, xs = np.mgrid[0:h, 0:w]
    inside = {"left": xs < w / 3, "top": ys < h / 3, "corner": xs + ys < 0.8 * w}[side]
    assert_reads_as_clean(in_shadow(clean, inside, 0.5), clean)


# Before the polarity was read from a median (not a mean) and the shadow's tips cut off at the
# border, each of these came out as the shadow's edge or with the digit shrunk beside its specks.
@pytest.mark.parametrize("text", "0348")
@pytest.mark.parametrize("shaded", [0.6, 0.7])
def test_a_small_digit_beside_a_shadow_over_most_of_the_page(text, shaded):
    """A digit in the lit corner of a page whose other `shaded` share lies in a sharp-edged shadow,
    the paper there at half the light: most of the image's border is shadow, yet the ink is the dark
    strokes, not the lit paper, and the shadow's edge is no stroke."""
    clean = Image.new("L", (480, 480), 255)
    clean.paste(draw(text, size=140), (10, 10))
    ys, xs = np.mgrid[0:480, 0:480]
    inside = xs + ys > (1 - shaded) * 960
    assert_reads_as_clean(in_shadow(clean, inside, 0.5), clean)


@pytest.mark.parametrize("text", "0348")
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_shadow_holding_the_digit_is_not_taken_for_a_table_around_the_sheet(text, side):
    """Three quarters of the page in a sharp shadow that holds the digit, a lit band of clean paper
    beside it: that band looks like a sheet on a dark table, but the writing is in the shadow."""
    clean = Image.new("L", (240, 300), 255)
    clean.paste(draw(text, size=160), {"left": (10, 60), "right": (70, 60)}[side])
    xs = np.mgrid[0:300, 0:240][1]
    inside = xs < 180 if side == "left" else xs > 60
    assert_reads_as_clean(in_shadow(clean, inside, 0.55), clean, blotches=False)


@pytest.mark.parametrize("text", "0348")
@pytest.mark.parametrize("edge", ["level", "diagonal"])
def test_the_edge_of_a_sharp_shadow_is_no_stroke(text, edge):
    """A sharp-edged shadow across the page: level, just above the digit it holds, or diagonal
    through the middle of the page, beside the digit. The coarse background blurs the edge, which
    left a line of shadowed paper along it as ink, as dark as the strokes once stretched."""
    size, at, (h, w) = {"level": (160, (30, 130), (300, 240)), "diagonal": (120, (10, 10), (480, 480))}[edge]
    clean = Image.new("L", (w, h), 255)
    clean.paste(draw(text, size=size), at)
    ys, xs = np.mgrid[0:h, 0:w]
    inside = ys > 110 if edge == "level" else xs + ys > 480
    assert_reads_as_clean(in_shadow(clean, inside, 0.55), clean)


# A thin pen on a small page, a straight-edged shadow over about half of it (on the digit's side
# or the other), falling `angle` degrees from the x axis and cutting it at `cut` of the way across.
# Before the test for even lighting looked at a grid of at least 4 cells a side, each of these passed
# as evenly lit: on 2 or 3 cells, the paper level padded around the grid reached every cell.
@pytest.mark.parametrize(
    ("text", "width", "height", "size", "at", "angle", "cut", "blur", "depth"),
    [("1", 139, 311, 67, (46, 191), 276, 0.5, 4.5, 0.53), ("0", 315, 148, 64, (144, 32), 175, 0.57, 5.5, 0.48),
     ("3", 164, 285, 85, (39, 166), 288, 0.43, 5.7, 0.58), ("7", 133, 185, 62, (45, 123), 92, 0.41, 7.7, 0.42)],
)  # fmt: skip
def test_a_thin_digit_on_a_small_page_half_in_shadow(text, width, height, size, at, angle, cut, blur, depth):
    clean = Image.new("L", (width, height), 255)
    clean.paste(draw(text, size=size), at)
    clean = clean.filter(ImageFilter.MaxFilter(3))  # a thin pen: the font's strokes narrowed
    assert_reads_as_clean(in_straight_shadow(clean, angle, cut, depth, blur), clean)


def in_straight_shadow(clean: Image.Image, angle: float, cut: float, depth: float, blur: float) -> Image.Image:
    """`clean` under a straight-edged shadow (`in_shadow`) falling `angle` degrees from the x axis
    and cutting the page at `cut` of the way across."""
    width, height = clean.size
    ys, xs = np.mgrid[0:height, 0:width]
    a = np.radians(angle)
    inside = np.cos(a) * (xs / width - 0.5) + np.sin(a) * (ys / height - 0.5) > cut - 0.5
    return in_shadow(clean, inside, depth, blur)


# A deep shadow (the paper there at about a third of the light) over half or more of a small page,
# the digit in the lit part. Each of these was read as the shadow: either the shadowed paper joined
# the ink and, along the long side, passed for the bar of a bold digit cropped tight, or its paper
# lay about Otsu's threshold, in runs too short to tell it from the strokes' soft rims.
@pytest.mark.parametrize(
    ("text", "width", "height", "size", "at", "angle", "cut", "blur", "depth"),
    [("5", 396, 141, 59, (303, 28), 148, 0.39, 1.6, 0.68), ("1", 361, 146, 62, (24, 32), 36, 0.42, 5.8, 0.64),
     ("9", 148, 315, 41, (67, 230), 238, 0.37, 7.2, 0.66), ("0", 386, 144, 55, (32, 9), 31, 0.39, 6.6, 0.65)],
)  # fmt: skip
def test_a_digit_beside_a_deep_shadow_over_most_of_a_small_page(text, width, height, size, at, angle, cut, blur, depth):
    clean = Image.new("L", (width, height), 255)
    clean.paste(draw(text, size=size), at)
    assert_reads_as_clean(in_straight_shadow(clean, angle, cut, depth, blur), clean)


def falling_light(clean: Image.Image, angle: float, fall: float) -> Image.Image:
    """`clean` under light that falls off by `fall` of its strength across the page, towards
    `angle` degrees from the x axis."""
    w, h = clean.size
    ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
    along = np.cos(np.radians(angle)) * xs + np.sin(np.radians(angle)) * ys
    light = 1 - fall * (along - along.min()) / np.ptp(along)
    return Image.fromarray(np.round(np.asarray(clean, np.float64) * light).astype(np.uint8))


# Light falling off across a small page, and a soft shadow over about half of it that holds the
# digit (or most of it): the shadowed paper ranges from about half the light to a quarter. Each of
# these came out as a block of shadow: its paper, darkening within it, was split from the ink by
# neither Otsu's threshold nor the one above it, and the "strokes" as wide as the shadow hid it
# from the test for even lighting.
@pytest.mark.parametrize(
    ("text", "width", "height", "size", "at", "angle", "fall", "shadow", "cut", "blur", "depth"),
    [("1", 197, 152, 92, (15, 18), 71, 0.41, 39, 0.48, 9.7, 0.54), ("4", 154, 191, 87, (6, 13), 353, 0.43, 339, 0.5, 8.0, 0.51),
     ("7", 146, 169, 83, (26, 28), 356, 0.47, 336, 0.63, 5.8, 0.46), ("5", 114, 122, 62, (10, 19), 81, 0.42, 75, 0.63, 8.6, 0.55)],
)  # fmt: skip
def test_a_digit_in_a_shadow_under_falling_light(text, width, height, size, at, angle, fall, shadow, cut, blur, depth):
    clean = Image.new("L", (width, height), 255)
    clean.paste(draw(text, size=size), at)
    assert_reads_as_clean(in_straight_shadow(falling_light(clean, angle, fall), shadow, cut, depth, blur), clean)


def marker_digit(text: str, page: int, size: int, widen: int) -> Image.Image:
    """A marker digit: `text` drawn `size` px high in the middle of a square page `page` px a side,
    the font's strokes widened by a minimum filter `widen` px across."""
    clean = Image.new("L", (page, page), 255)
    clean.paste(draw(text, size=size), ((page - size) // 2, (page - size) // 2))
    return clean.filter(ImageFilter.MinFilter(widen))


# A marker digit, its strokes about a tenth of the image wide, in the middle of a page whose other
# half (a little more of its border) lies in a sharp shadow. The border's light half leaves the
# polarity to the departures from a median, and at 48 px a side such strokes were their own median:
# the paper inside the loops departed further, and each of these was read as light ink on dark.
@pytest.mark.parametrize(("text", "angle"), [("8", 45), ("8", 135), ("8", 225), ("8", 315), ("6", 45), ("9", 135)])
def test_a_bold_digit_across_the_edge_of_a_sharp_shadow(text, angle):
    clean = marker_digit(text, page=250, size=200, widen=17)
    assert_reads_as_clean(in_straight_shadow(clean, angle, 0.47, 0.45, 3), clean)


def test_erosion_by_running_sums_is_a_minimum_filter():
    """`_eroded` (the shadow test's) keeps what Pillow's minimum filter over the same square keeps,
    the edges repeated beyond the border as Pillow repeats them."""
    from digits_lightning.preprocess import _eroded

    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((int(rng.integers(5, 80)), int(rng.integers(5, 80)))) < 0.85
        r = int(rng.integers(1, 8))
        pillow = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(2 * r + 1))) > 0
        np.testing.assert_array_equal(_eroded(mask, r), pillow)


# A marker digit on a page half again its size, the shadow's edge through the middle of the digit
# and the paper beyond it at half the light (as a phone shades a photo of it). Before a sharp
# shadow got a background of its own, the coarse grid blurred the shadow's edge into the strokes,
# and each of these came out with a block of shadowed paper as ink or the strokes in the shadow
# broken.
@pytest.mark.parametrize(("text", "angle"), [("0", 120), ("2", 300), ("2", 210), ("3", 30), ("5", 120), ("6", 30)])
def test_a_marker_digit_half_in_a_sharp_shadow(text, angle):
    clean = marker_digit(text, page=240, size=160, widen=9)
    assert_reads_as_clean(in_straight_shadow(clean, angle, 0.5, 0.5, 2), clean)


@pytest.mark.parametrize(("text", "neighbour"), [("3", "7"), ("0", "4"), ("8", "1")])
def test_a_piece_of_the_next_digit_at_the_edge_of_a_crop_is_left_out(text, neighbour):
    """A digit cropped from a row of them, the next one's first strokes showing at the right edge
    beyond a clear gap: the digit is read alone, as if the crop had been clean."""
    clean = Image.new("L", (400, 260), 255)
    clean.paste(draw(text, size=220), (20, 20))
    cropped = clean.copy()
    next_one = draw(neighbour, size=220)
    left = int(np.flatnonzero((np.asarray(next_one) < 128).any(axis=0))[0])
    cropped.paste(next_one.crop((left, 0, left + 40, 220)), (360, 20))  # its first 40 columns of ink
    assert np.asarray(cropped)[:, 360:].min() < 128 and np.asarray(cropped)[:, 250:360].min() > 128
    assert_reads_as_clean(cropped, clean, blotches=False)


def marker_bar(width: int, blur: float, margin: int, slant: int) -> Image.Image:
    """A "1" written with a broad marker and cropped tight: a dark bar `width` pixels wide, 150 high,
    slanted by `slant` pixels, with a paper margin of `margin` pixels and soft edges (`blur`)."""
    page = np.full((150, width + 2 * margin), 225.0)
    for y in range(4, 146):
        left = margin + round(slant * (y - 75) / 150)
        page[y, left : left + width] = 30.0
    return Image.fromarray(page.astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))


# (width, blur, margin, slant): before the bar was given one paper level, the first four came out
# hollow (the bar's outline) and the last four were called blank.
@pytest.mark.parametrize(
    ("width", "blur", "margin", "slant"),
    [(24, 3, 4, 6), (30, 3, 4, 6), (30, 5, 4, 0), (36, 5, 2, 0), (24, 8, 4, 0), (30, 3, 2, 0), (30, 8, 8, 6), (36, 8, 4, 0)],
)
def test_a_bold_one_cropped_tight_comes_out_solid(width, blur, margin, slant):
    digit = to_mnist(marker_bar(width, blur, margin, slant))
    assert_mnist_digit(digit)
    for row in digit[6:22] > 127:  # the middle of the bar, away from its ends: one run of ink a row
        cols = np.flatnonzero(row)
        assert cols.size and cols.max() - cols.min() + 1 == cols.size, row.astype(int)


def stroke_width(digit: np.ndarray) -> float:
    """Mean stroke width of the pixels above half intensity: area over half the outline."""
    mask = digit > 127
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return 2 * mask.sum() / max(int((mask & ~inner).sum()), 1)


def stretched_bar(width: int, soft: bool = False) -> Image.Image:
    """A slanted bar `width` pixels wide on a 200x200 page (a "1"), binarised, its box stretched to
    fill 16x16 (nearest) and stored 5 times larger, as binarised scans of digits squared to their
    box are: two gray levels. `soft`: stored larger bilinearly instead, with gray edges."""
    page = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(page).line([(120, 15), (80, 185)], fill=0, width=width)
    ink = np.asarray(page) < 128
    ys, xs = np.nonzero(ink)
    square = Image.fromarray(~ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]).resize((16, 16), Image.Resampling.NEAREST)
    if soft:
        return square.convert("L").resize((80, 80), Image.Resampling.BILINEAR)
    return square.resize((80, 80), Image.Resampling.NEAREST)


@pytest.mark.parametrize("width", [24, 32, 36])
def test_the_wide_strokes_of_a_binarised_digit_squared_to_its_box_are_thinned(width):
    """Stretched to fill its square, a slanted "1" becomes a bar over 6 pixels wide in MNIST's 20x20
    box. With hard edges (two gray levels, a 1-bit scan) it is brought toward MNIST's stroke width;
    with soft ones (a bold pen, a blurry upscale) it is left as wide as drawn."""
    hard, soft = to_mnist(stretched_bar(width)), to_mnist(stretched_bar(width, soft=True))
    assert_mnist_digit(hard)
    assert stroke_width(hard) < 5.5 < stroke_width(soft)


PEN = {  # digits drawn as 1-pixel polylines, as a drawing program's thinnest pen would
    "7": [(110, 80), (290, 80), (170, 330)],
    "4": [(240, 330), (240, 70), (100, 250), (300, 250)],
    "2": [(120, 120), (160, 75), (240, 75), (280, 130), (250, 200), (120, 320), (290, 320)],
}


@pytest.mark.parametrize("text", PEN)
def test_thin_pen_strokes_are_thickened(text):
    page = Image.new("L", (400, 400), 255)
    ImageDraw.Draw(page).line(PEN[text], fill=0, width=1)
    digit = to_mnist(page)
    assert_mnist_digit(digit)
    # A naive resize of the same ink into the 20x20 box keeps the strokes 1 pixel wide and faint.
    ink = 255 - np.asarray(page)
    ys, xs = np.nonzero(ink)
    crop = Image.fromarray(ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    scale = 20 / max(crop.size)
    naive = np.asarray(crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.BOX))
    naive = (naive.astype(np.float64) * 255 / naive.max()).astype(np.uint8)
    assert stroke_width(digit) >= 1.8
    assert (digit > 127).sum() > 1.5 * (naive > 127).sum()


SMALL_PEN = {  # the same digits drawn in a 28x28 canvas, as in a drawing app of MNIST's own size
    name: [(round(x * 28 / 400), round(y * 28 / 400)) for x, y in points] for name, points in PEN.items()
}


@pytest.mark.parametrize("text", SMALL_PEN)
@pytest.mark.parametrize("gray", [235, 240])
def test_faint_thin_gray_strokes_in_a_28x28_drawing_are_read(tmp_path, text, gray):
    # A light-gray pen one pixel wide on white: faint (15-20 gray levels), but on noiseless
    # paper plainly there. It must read as the same digit drawn in black, not as a blank.
    paths = {}
    for ink in (gray, 0):
        page = Image.new("L", (28, 28), 255)
        ImageDraw.Draw(page).line(SMALL_PEN[text], fill=ink, width=1)
        paths[ink] = tmp_path / f"{text}_{ink}.png"
        page.save(paths[ink])
    faint, dark = preprocess_file(paths[gray]), preprocess_file(paths[0])
    assert_mnist_digit(faint)
    assert difference(faint, dark) < SAME


def test_mnist_convention_digits_are_a_fixed_point():
    """A digit already in MNIST's convention (such as `to_mnist`'s own output) comes back as it was."""
    images, _ = render_digits(200, seed=3)
    once = [to_mnist(Image.fromarray(d)) for d in images]
    twice = [to_mnist(Image.fromarray(d)) for d in once]
    diffs = np.array([np.abs(a.astype(int) - b).mean() for a, b in zip(once, twice)])
    assert diffs.mean() < 6 and np.percentile(diffs, 95) < 12, (diffs.mean(), np.percentile(diffs, 95))


def test_real_mnist_digits_stay_close(real_mnist):
    with gzip.open(real_mnist / "t10k-images-idx3-ubyte.gz") as f:
        digits = np.frombuffer(f.read()[16 : 16 + 500 * 784], np.uint8).reshape(-1, 28, 28)
    diffs = np.array([np.abs(to_mnist(Image.fromarray(d)).astype(int) - d).mean() for d in digits])
    assert diffs.mean() < 6 and np.percentile(diffs, 95) < 12, (diffs.mean(), np.percentile(diffs, 95))


# -- files that cannot become a digit --------------------------------------------------------------


def png_claiming(path: Path, width: int, height: int) -> None:
    """A 1x1 PNG whose header says `width` x `height`: a decompression bomb's header, in 70 bytes."""
    Image.new("L", (1, 1), 255).save(path, "PNG")
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def truncated(path: Path, suffix: str) -> None:
    full = path.with_name("full" + suffix)
    draw("5", size=300).convert("RGB").save(full)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD = {  # name: (write the file, kind, words the message must hold)
    "zero bytes": (lambda p: p.write_bytes(b""), "empty", ["empty", "re-save"]),
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "not an image", ["PNG"]),
    "text file": (lambda p: p.write_text("shopping list: milk, 3 eggs\n"), "not an image", ["PNG"]),
    "svg": (
        lambda p: p.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><text x="5" y="20">3</text></svg>'),
        "not an image", ["convert"],
    ),
    "truncated png": (lambda p: truncated(p, ".png"), "damaged", ["truncated", "re-save"]),
    "truncated jpeg": (lambda p: truncated(p, ".jpg"), "damaged", ["truncated", "re-save"]),
    "bomb 40000x40000": (lambda p: png_claiming(p, 40000, 40000), "too large", ["too large", "crop or shrink"]),
    "bomb just over the limit": (lambda p: png_claiming(p, 12000, MAX_PIXELS // 12000 + 1), "too large", ["crop or shrink"]),
    "white": (lambda p: Image.new("L", (200, 200), 255).save(p, "PNG"), "blank", ["blank"]),
    "gray": (lambda p: Image.new("RGB", (200, 200), (128, 128, 128)).save(p, "PNG"), "blank", ["blank"]),
    "black": (lambda p: Image.new("L", (64, 64), 0).save(p, "PNG"), "blank", ["blank"]),
    "faint noise": (
        lambda p: Image.fromarray(np.random.default_rng(1).integers(120, 126, (200, 200), dtype=np.uint8)).save(p, "PNG"),
        "blank", ["blank"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_files_raise_one_clear_error(case, tmp_path):
    write, kind, words = BAD[case]
    path = tmp_path / "file"
    write(path)
    with pytest.raises(ImageError) as err:
        preprocess_file(path)
    assert err.value.kind == kind
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_size_limit_is_ours_not_pillows(tmp_path):
    # 95 MP is over Pillow's warning threshold (89.5 MP) but within ours: the header passes and the
    # missing pixel data is what fails.
    png_claiming(tmp_path / "big.png", 10_000, 9_500)
    with pytest.raises(ImageError) as err:
        preprocess_file(tmp_path / "big.png")
    assert err.value.kind == "damaged"


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(ImageError) as err:
        preprocess_file(tmp_path / "nowhere.png")
    assert err.value.kind == "unreadable" and "exists" in str(err.value)


@pytest.mark.parametrize("case", BAD)
def test_uploaded_bytes_raise_the_same_errors_as_files(case, tmp_path):
    write, kind, _ = BAD[case]
    path = tmp_path / "file"
    write(path)
    with pytest.raises(ImageError) as err:
        to_mnist(load_image(path.read_bytes()))
    assert err.value.kind == kind


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_uploaded_bytes_read_as_the_file_does(tmp_path, suffix):
    path = tmp_path / f"upload{suffix}"
    draw("4", size=300).convert("RGB").save(path)
    assert np.array_equal(to_mnist(load_image(path.read_bytes())), preprocess_file(path))
    assert np.array_equal(to_mnist(load_image(bytearray(path.read_bytes()))), preprocess_file(path))


def test_a_pen_one_pixel_wide_is_not_taken_for_noise():
    from digits_lightning.preprocess import _without_impulses

    page = strokes(60, (10, 10, 50, 10), (30, 10, 30, 50), (10, 50, 50, 20), (12, 30, 14, 31), width=1)
    gray = np.asarray(page, np.float32) / 255
    assert np.array_equal(_without_impulses(gray), gray)  # horizontal, vertical, slanted: all kept


def test_the_lanczos_reduction_is_pillows():
    from digits_lightning.preprocess import _lanczos

    rng = np.random.default_rng(0)
    for _ in range(200):  # tall, wide and square boxes, reduced and enlarged to a 20-pixel side
        h, w = (int(n) for n in rng.integers(1, 120, 2))
        ink = (rng.random((h, w)) * (rng.random((h, w)) > 0.4)).astype(np.float32)
        size = (max(1, round(w * 20 / max(h, w))), max(1, round(h * 20 / max(h, w))))
        pillow = np.asarray(Image.fromarray(ink, "F").resize(size, Image.Resampling.LANCZOS))
        ours = _lanczos(ink, size)
        assert ours.shape == pillow.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, pillow, rtol=0, atol=3e-7)
