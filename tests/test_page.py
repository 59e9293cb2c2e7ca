"""The drawing page end to end in a real headless Chromium (Debian's `chromium`, driven by Playwright
for Python; no browser download): strokes drawn with pointer events are read live, undo and clear
work, a finger drawing does not scroll the page, and image files are read when chosen or dropped.

The screenshot of the answered drawing is a test artifact, written to $DIGITS_TEST_ARTIFACTS (else
the test's temporary folder); with DIGITS_UPDATE_DOCS=1 it also replaces docs/serve.png, the
README's picture.
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from digits_lightning import serve
from tests.test_serve import SEVEN, THREE, checkpoint, drawn, png, running  # noqa: F401 (checkpoint: a fixture)

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed: pip install -e '.[test]'")

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve.png"
TIMEOUT_MS = 20_000  # a busy 2-core machine; an answer normally takes 10-50 ms


def chromium_path() -> str:
    """Debian's Chromium (or $CHROMIUM); the browser tests skip, saying how to get it, where there is none."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no Chromium found (apt-get install -y chromium, or set CHROMIUM to its path): the browser test needs one")


@pytest.fixture(scope="module")
def url(checkpoint):  # noqa: F811 (the imported fixture)
    with running(serve.create_app(serve.load_checkpoint(checkpoint))) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url):
    context = browser.new_context(viewport={"width": 760, "height": 520}, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems = []
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.on("requestfailed", lambda request: problems.append(f"{request.url}: {request.failure}"))
    page.goto(url)
    yield page
    context.close()
    assert not problems, problems  # no script errors, and nothing the page asked for was refused


def canvas_point(page, x: float, y: float) -> tuple[float, float]:
    """A point given in the canvas's own 280x280 pixels, on the screen."""
    box = page.locator("#canvas").bounding_box()
    return box["x"] + x * box["width"] / 280, box["y"] + y * box["height"] / 280


def stroke(page, points: list[tuple[float, float]], steps: int = 8, lift: bool = True) -> None:
    """A mouse stroke through `points` (canvas pixels): pointerdown, pointermoves, pointerup."""
    page.mouse.move(*canvas_point(page, *points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*canvas_point(page, *point), steps=steps)
    if lift:
        page.mouse.up()


def answered(page) -> dict:
    """Waits for the answer to the latest drawing or file, and reads it off the page."""
    page.wait_for_selector("body[data-state=answer]")
    bars = page.locator("#bars .bar")
    return {
        "digit": page.locator("#digit").inner_text(),
        "probabilities": [float(bars.nth(i).get_attribute("data-probability")) for i in range(bars.count())],
        "seen": page.locator("#seen").get_attribute("src"),
    }


def check_answer(answer: dict, digit: str) -> None:
    assert answer["digit"] == digit
    assert len(answer["probabilities"]) == 10
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-6)
    assert max(answer["probabilities"]) == answer["probabilities"][int(digit)]
    assert answer["seen"].startswith("data:image/png;base64,")
    seen = Image.open(__import__("io").BytesIO(base64.b64decode(answer["seen"].split(",", 1)[1])))
    assert seen.size == (28, 28)


def test_drawing_is_read_live_and_undo_and_clear_work(page, tmp_path, checkpoint):  # noqa: F811
    page.wait_for_function("document.getElementById('model').textContent.includes('.ckpt')")
    assert page.locator("#model").inner_text() == f"CNNClassifier from {checkpoint.name}"
    assert page.locator("body").get_attribute("data-state") == "empty"
    assert page.locator("#empty").is_visible() and "Nothing drawn yet" in page.locator("#empty").inner_text()
    assert page.locator("#undo").is_disabled() and not page.locator("#answer").is_visible()

    # Live: an answer appears while the pen is still down, before the stroke is finished ...
    posts = []
    page.on("request", lambda request: posts.append(request) if request.url.endswith("/api/predict") else None)
    page.evaluate("window.moves = 0; canvas.addEventListener('pointermove', () => window.moves++)")
    (bar, stem) = (SEVEN[0][:2], SEVEN[0][1:])
    start = time.monotonic()
    stroke(page, bar, steps=20, lift=False)
    page.wait_for_selector("#answer:visible")
    page.mouse.move(*canvas_point(page, *stem[1]), steps=20)
    page.mouse.up()
    check_answer(answered(page), "7")
    # ... debounced: at most one request per DELAY_MS (120 ms) of drawing, not one per pointer move.
    moves, seconds = page.evaluate("window.moves"), time.monotonic() - start
    assert 2 <= len(posts) <= seconds / 0.120 + 1 and len(posts) < moves / 2, (len(posts), moves, seconds)
    save_screenshot(page, tmp_path)

    # A stroke too many, then undone: the 7 again.
    stroke(page, [(40, 250), (250, 250)])
    page.wait_for_function("document.body.dataset.state !== 'waiting'")
    page.locator("#undo").click()
    check_answer(answered(page), "7")

    page.locator("#clear").click()
    page.wait_for_selector("body[data-state=empty]")
    assert page.locator("#empty").is_visible() and not page.locator("#answer").is_visible()
    assert page.locator("#clear").is_disabled()


def test_a_finger_draws_without_scrolling_the_page(page):
    """A touch drag on the canvas draws (pointer events) instead of scrolling the page (touch-action)."""
    page.set_viewport_size({"width": 360, "height": 440})  # a phone: the page is taller than the screen
    assert page.evaluate("document.documentElement.scrollHeight > innerHeight")
    assert page.locator("#canvas").evaluate("c => getComputedStyle(c).touchAction") == "none"
    cdp = page.context.new_cdp_session(page)
    path = [canvas_point(page, 150, 250 - 10 * i) for i in range(21)]  # a 1, drawn upwards
    assert all(0 < y < 440 for _, y in path)  # on the screen

    def touch(kind: str, point=None) -> None:
        points = [{"x": point[0], "y": point[1]}] if point else []
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    touch("touchStart", path[0])
    for point in path[1:]:
        touch("touchMove", point)
    touch("touchEnd")
    check_answer(answered(page), "1")
    assert page.evaluate("scrollY") == 0


def test_image_files_are_read_when_chosen_or_dropped(page, tmp_path):
    three = tmp_path / "three.png"
    three.write_bytes(THREE)
    page.locator("#file").set_input_files(three)
    check_answer(answered(page), "3")
    assert "three.png" in page.locator("#source").inner_text()

    # Dropped: a drawing of a 7, as a file from the desktop would come.
    drop_file(page, "seven.png", png(drawn(SEVEN)))
    check_answer(answered(page), "7")
    assert "seven.png" in page.locator("#source").inner_text()

    # A file that is no digit: the server's message, in place of an answer.
    drop_file(page, "white.png", png(Image.new("L", (64, 64), 255)))
    page.wait_for_selector("body[data-state=error]")
    assert "no digit found" in page.locator("#error").inner_text()
    assert not page.locator("#answer").is_visible()

    page.locator("#clear").click()  # back to the start, without drawing anything
    page.wait_for_selector("body[data-state=empty]")
    assert page.locator("#empty").is_visible() and not page.locator("#error").is_visible()


def drop_file(page, name: str, data: bytes) -> None:
    """Drops a file on the drop zone as the browser does: a `drop` event whose DataTransfer holds it."""
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            return transfer;
        }""",
        [name, base64.b64encode(data).decode()],
    )
    page.locator("#drop").dispatch_event("dragover", {"dataTransfer": transfer})
    page.locator("#drop").dispatch_event("drop", {"dataTransfer": transfer})


def save_screenshot(page, tmp_path: Path) -> None:
    folder = Path(os.environ.get("DIGITS_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] >= 700
    if os.environ.get("DIGITS_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
