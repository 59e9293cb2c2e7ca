"""`serve`'s HTTP API over real HTTP (uvicorn on a free loopback port), with a model trained here on
the tiny data set: answers that agree with `predict`'s CSV, every error as JSON, and a server that
keeps answering after each bad request."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image, ImageDraw

from digits_lightning import serve
from digits_lightning.cli import main as cli_main
from digits_lightning.errors import UserError
from tests.helpers import draw, train

LIMIT_MB = 0.05  # the test servers refuse uploads over 50 kB: small enough to send over it quickly


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1"):
    """`app` served by uvicorn in a thread of this process, on a free port; yields its base URL."""
    sock = serve.bind(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield serve.address(sock).rstrip("/")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def checkpoint(tiny_mnist, tmp_path_factory) -> Path:
    return train(tiny_mnist, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def url(checkpoint):
    with running(serve.create_app(serve.load_checkpoint(checkpoint), max_upload_mb=LIMIT_MB)) as base:
        yield base


@pytest.fixture
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawn(strokes: list[list[tuple[float, float]]], size: int = 280) -> Image.Image:
    """Strokes of an 18-pixel black pen on a white 280x280 RGBA canvas, as the page sends them."""
    image = Image.new("RGBA", (size, size), "white")
    pen = ImageDraw.Draw(image)
    for points in strokes:
        pen.line(points, fill="black", width=18, joint="curve")
    return image


SEVEN = [[(70, 60), (210, 60), (120, 240)]]  # a hand-drawn 7: the bar, then the stem
THREE = png(draw("3"))  # the font's 3, dark on light paper, 200x200: the kind of digit the tiny model learnt


def check_prediction(body: dict, digit: int) -> None:
    """The API's answer, as documented: the class, its name, its probability, all ten, the 28x28 input."""
    assert set(body) == {"digit", "label", "confidence", "probabilities", "image"}
    assert body["digit"] == digit and body["label"] == str(digit)
    probs = body["probabilities"]
    assert len(probs) == 10 and all(0 <= p <= 1 for p in probs)
    assert sum(probs) == pytest.approx(1, abs=1e-6)
    assert body["confidence"] == max(probs) == probs[digit]
    seen = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert seen.format == "PNG" and seen.size == (28, 28) and seen.mode == "L"


def test_predicts_an_uploaded_file_and_raw_image_bytes(client):
    """The same image as a multipart form field and as a raw body with an image type: one answer."""
    form = client.post("/api/predict", files={"image": ("three.png", THREE, "image/png")})
    raw = client.post("/api/predict", content=THREE, headers={"Content-Type": "image/png"})
    assert form.status_code == raw.status_code == 200
    assert form.headers["content-type"] == "application/json"
    check_prediction(form.json(), 3)
    assert raw.json() == form.json()


def test_reads_a_drawing_from_the_page(client):
    """A 280x280 RGBA PNG of pen strokes, what the page's canvas sends: the model sees the digit
    white on black, centred, and reads it."""
    response = client.post("/api/predict", files={"image": ("drawing.png", png(drawn(SEVEN)), "image/png")})
    assert response.status_code == 200
    body = response.json()
    check_prediction(body, 7)
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image"]))))
    assert (seen > 127).mean() < 0.25  # white ink on black, as MNIST
    ys, xs = np.nonzero(seen > 127)
    assert ys.max() - ys.min() + 1 in (19, 20) and xs.max() - xs.min() + 1 < 18  # taller than wide: 20 high, MNIST's box


def bad_files(folder: Path) -> dict[str, bytes]:
    """Files that cannot become a digit, one of each kind predict's CSV reports."""
    files = {
        "notes.png": b"these are my notes, not a picture\n",
        "cut.png": THREE[: len(THREE) // 2],
        "white.png": png(Image.new("L", (200, 200), 255)),
        "nothing.png": b"",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_answers_agree_with_the_prediction_csv(client, checkpoint, tmp_path, monkeypatch):
    """For a folder of files, the API gives each good file the CSV's digit and confidence, and each bad
    one a 422 whose `error` and `message` are the CSV's error column (`kind: message`)."""
    folder = tmp_path / "images"
    folder.mkdir()
    files = bad_files(folder)
    files["three.png"] = THREE
    files["seven.png"] = png(drawn(SEVEN))
    for name in ("three.png", "seven.png"):
        (folder / name).write_bytes(files[name])
    monkeypatch.chdir(tmp_path)
    cli_main(["predict", f"--ckpt_path={checkpoint}", f"--data.predict_path={folder}", "--trainer.enable_progress_bar=false"])
    csv_path = tmp_path / "predictions.csv"
    with open(csv_path, newline="") as f:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(f)}
    assert set(rows) == set(files)
    for name, data in files.items():
        response = client.post("/api/predict", files={"image": (name, data, "image/png")})
        body, row = response.json(), rows[name]
        if row["error"]:
            assert response.status_code == 422, name
            assert f"{body['error']}: {body['message']}" == row["error"]
        else:
            assert response.status_code == 200, name
            assert str(body["digit"]) == row["digit"] and body["label"] == row["label"]
            assert body["confidence"] == pytest.approx(float(row["confidence"]), abs=1e-3)
    assert {rows[n]["error"].split(":")[0] for n in ("notes.png", "cut.png", "white.png", "nothing.png")} == {
        "not an image",
        "damaged",
        "blank",
        "empty",
    }


def over_limit() -> bytes:
    """A real PNG of noise, larger than the test servers' 50 kB limit."""
    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    data = png(Image.fromarray(noise))
    assert len(data) > LIMIT_MB * 1e6
    return data


def chunks(data: bytes, size: int = 8192):
    """The body as a generator: httpx sends it chunked, without a Content-Length to refuse it by."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


BAD_REQUESTS = {
    # name: (method, request arguments, status, error kind)
    "over the limit": ("POST", lambda: {"files": {"image": ("big.png", over_limit(), "image/png")}}, 413, "upload too large"),
    "over the limit, raw": ("POST", lambda: {"content": over_limit(), "headers": {"Content-Type": "image/png"}}, 413, "upload too large"),
    "over the limit, chunked": ("POST", lambda: {"content": chunks(over_limit()), "headers": {"Content-Type": "image/png"}}, 413, "upload too large"),
    "not an image": ("POST", lambda: {"files": {"image": ("notes.png", b"my notes\n", "image/png")}}, 422, "not an image"),
    "damaged": ("POST", lambda: {"content": THREE[:-200], "headers": {"Content-Type": "image/png"}}, 422, "damaged"),
    "blank": ("POST", lambda: {"files": {"image": ("white.png", png(Image.new("L", (50, 50), 255)), "image/png")}}, 422, "blank"),
    "empty": ("POST", lambda: {"content": b"", "headers": {"Content-Type": "image/png"}}, 422, "empty"),
    "no image field": ("POST", lambda: {"files": {"picture": ("three.png", THREE, "image/png")}}, 422, "no image"),
    "image field as text": ("POST", lambda: {"data": {"image": "three.png"}, "files": {"x": ("x.txt", b"x", "text/plain")}}, 422, "no image"),
    "text body": ("POST", lambda: {"content": b"three", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported media type"),
    "no content type": ("POST", lambda: {"content": THREE}, 415, "unsupported media type"),
    "multipart, no boundary": ("POST", lambda: {"content": b"three", "headers": {"Content-Type": "multipart/form-data"}}, 400, "bad request"),
    "multipart, no parts": ("POST", lambda: {"content": b"--x\r\nnonsense", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}, 422, "no image"),
    "GET": ("GET", lambda: {}, 405, "method not allowed"),
    "PUT": ("PUT", lambda: {"content": THREE, "headers": {"Content-Type": "image/png"}}, 405, "method not allowed"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(client, name):
    method, arguments, status, kind = BAD_REQUESTS[name]
    response = client.request(method, "/api/predict", **arguments())
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == kind
    assert isinstance(body["message"], str) and body["message"] and "\n" not in body["message"]
    # ... and the next good image is read as ever.
    check_prediction(client.post("/api/predict", files={"image": ("three.png", THREE, "image/png")}).json(), 3)


def test_a_decompression_bomb_is_refused_as_the_csv_refuses_it(client):
    """A small file of too many pixels: 422 "too large", not an out-of-memory server."""
    data = png(Image.new("1", (10_001, 10_001)))  # 100,020,001 pixels, a few kB of PNG
    response = client.post("/api/predict", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 422 and response.json()["error"] == "too large"
    assert client.get("/api/health").json()["status"] == "ok"


def test_concurrent_requests_each_get_their_own_answer(client):
    """Several clients at once (decoding runs in threads, the model one request at a time)."""
    images = {3: THREE, 7: png(drawn(SEVEN))}
    digits = [3, 7] * 8

    def ask(digit: int) -> int:
        return client.post("/api/predict", files={"image": ("d.png", images[digit], "image/png")}).json()["digit"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(ask, digits)) == digits


def test_health_docs_and_the_page(client, checkpoint):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["model"] == "CNNClassifier" and health["file"] == str(checkpoint)
    assert health["classes"] == [str(d) for d in range(10)]
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/png" in body
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    for asset in re.findall(r'(?:src|href)="([^"]+)"', docs.text):  # no CDN: the docs work offline too
        assert asset.startswith("/"), asset
        assert client.get(asset).status_code == 200, asset
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    # No external assets: everything the page loads comes from this server.
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert asset.startswith("/"), asset
        if asset.startswith("/static/"):
            text = client.get(asset).raise_for_status().text
            assert not re.search(r"https?://", text), asset
    assert client.get("/no/such/page").json()["error"] == "not found"


def test_the_command_prints_the_address_and_serves(checkpoint, tmp_path):
    """`serve.main` in its own process, as `python -m digits_lightning serve` runs it: on 127.0.0.1
    unless told otherwise, the address printed, the API answering there, and Ctrl+C ends it."""
    command = [sys.executable, "-c", "import sys; from digits_lightning.serve import main; main(sys.argv[1:])"]
    process = subprocess.Popen(
        [*command, f"--ckpt_path={checkpoint}", "--port=0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + process.stderr.read() if process.poll() is not None else line
        response = httpx.post(f"{found.group(0)}api/predict", files={"image": ("three.png", THREE, "image/png")}, timeout=30)
        check_prediction(response.json(), 3)
    finally:
        process.send_signal(2)  # SIGINT, as Ctrl+C
        try:
            process.wait(20)
        finally:
            process.kill()
    assert process.returncode == 0, process.stderr.read()


def one_line_only(self, *args) -> None:
    """`UserError.__init__`, checking the message is one line (the entry point prints it as one)."""
    assert len(args) == 1 and "\n" not in args[0], args
    Exception.__init__(self, *args)


def test_mistakes_in_the_command_are_one_line_user_errors(checkpoint, tmp_path, monkeypatch, capsys):
    """Refused in one line each, before the command changes anything for the whole process."""
    threads = torch.get_num_threads()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(serve.UserError, "__init__", one_line_only)
    with pytest.raises(UserError, match=r"^no checkpoint in checkpoints/cnn: train one first .* or pass --ckpt_path$"):
        serve.run([])
    with pytest.raises(UserError, match="no such checkpoint file"):
        serve.run(["--ckpt_path=missing.ckpt"])
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        serve.run(["--ckpt_path=notes.ckpt"])
    with pytest.raises(UserError, match="no such ONNX model"):
        serve.run(["--onnx_path=missing.onnx"])
    with pytest.raises(UserError, match="pass --ckpt_path or --onnx_path, not both"):
        serve.run([f"--ckpt_path={checkpoint}", "--onnx_path=model.onnx"])
    with pytest.raises(UserError, match=r"unrecognized arguments: --prot=80 \(python -m digits_lightning serve --help\)"):
        serve.run(["--prot=80"])
    with pytest.raises(UserError, match="--max_upload_mb must be positive"):
        serve.run([f"--ckpt_path={checkpoint}", "--max_upload_mb=0"])
    with pytest.raises(UserError, match="--port must be between 0 and 65535"):
        serve.run([f"--ckpt_path={checkpoint}", "--port=70000"])
    with pytest.raises(UserError, match="--host no.such.host.invalid: not an address"):
        serve.run([f"--ckpt_path={checkpoint}", "--host=no.such.host.invalid"])
    busy = serve.bind("127.0.0.1", 0)
    try:
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=rf"cannot listen on 127.0.0.1:{port} .*pass another --port"):
            serve.run([f"--ckpt_path={checkpoint}", f"--port={port}"])
    finally:
        busy.close()
    assert torch.get_num_threads() == threads
    # The command itself: the message as one line on stderr, and exit status 2.
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        serve.main(["--ckpt_path=missing.ckpt"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: missing.ckpt: no such checkpoint file") and err.count("\n") == 1


@pytest.fixture(scope="module")
def exported(checkpoint, tiny_mnist) -> Path:
    """The test checkpoint exported by the real `export` command: the float .onnx beside it."""
    cli_main(["export", f"--ckpt_path={checkpoint}", "--int8=false", f"--data.data_dir={tiny_mnist}"])
    return checkpoint.with_suffix(".onnx")


BLOCKED = "import sys\nfor name in ('torch', 'lightning', 'torchvision'):\n    sys.modules[name] = None\n"


def test_an_exported_model_is_served_without_torch(exported, client):
    """`--onnx_path`: the model from `export`, served in a process that cannot import torch, answers
    as the checkpoint it came from does."""
    command = [sys.executable, "-c", BLOCKED + "from digits_lightning.serve import main; main(sys.argv[1:])"]
    process = subprocess.Popen([*command, f"--onnx_path={exported}", "--port=0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, line + (process.stderr.read() if process.poll() is not None else "")
        with httpx.Client(base_url=found.group(0), timeout=30) as onnx:
            health = onnx.get("api/health").json()
            assert health["model"] == "ONNX (onnxruntime)" and health["file"] == str(exported)
            assert health["classes"] == [str(d) for d in range(10)]
            for data in (THREE, png(drawn(SEVEN))):
                answer = onnx.post("api/predict", files={"image": ("d.png", data, "image/png")}).json()
                expected = client.post("/api/predict", files={"image": ("d.png", data, "image/png")}).json()
                assert answer["digit"] == expected["digit"] and answer["image"] == expected["image"]
                assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)
                assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-6)
            assert onnx.post("api/predict", content=b"notes", headers={"Content-Type": "image/png"}).json()["error"] == "not an image"
    finally:
        process.send_signal(2)
        try:
            process.wait(20)
        finally:
            process.kill()
    assert process.returncode == 0, process.stderr.read()
