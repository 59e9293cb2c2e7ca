"""`python -m digits_lightning serve`: a local web page to draw digits on, and an HTTP API, for one
checkpoint (run by torch) or one model written by `export` (run by onnxruntime, without torch).

The page (`static/`) and the API share one path: the bytes of an image go through the same
decoding as `predict`'s files (`conventions.read`, in the model's convention), so a drawing, an uploaded file and a CSV row
agree, and an image that cannot become a digit gets the same error kind and message as the
CSV's `error` column. The server must survive anything a client sends: uploads are cut off at a
size limit before they are held in memory, and every error is a JSON body with a message.

Concurrency: requests are decoded in worker threads, one per core (Pillow and NumPy release the GIL
for much of the work), and the model runs one request at a time under a lock. A single 28x28 image
is far too small for intra-op parallelism, so the model gets one thread: more would only compete
with the decoding threads for the same cores.

torch is imported only to serve a checkpoint, so that an exported model is served where only
onnxruntime, numpy, Pillow and the `serve` extra are installed.
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import swagger_ui_bundle
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from digits_lightning.cpus import usable_cpus
from digits_lightning.errors import UserError, fail
from digits_lightning import conventions
from digits_lightning.preprocess import ImageError

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0  # a phone photo is 3-12 MB; anything much larger is not a picture of one digit
NO_IMAGE = (
    "no image in the request: send it as the multipart form field `image` (curl -F image=@digit.png),"
    " or as the raw body with an image content type (-H 'Content-Type: image/png' --data-binary @digit.png)"
)


class Prediction(BaseModel):
    digit: int = Field(description="The predicted class (its index among the probabilities).")
    label: str = Field(description="The predicted class's name.")
    confidence: float = Field(description="The predicted class's probability.")
    probabilities: list[float] = Field(description="One probability per class, in class order; they sum to 1.")
    image: str = Field(description="The 28x28 image the model saw (white ink on black, as MNIST), as a base64 PNG.")


class ErrorBody(BaseModel):
    error: str = Field(description="The kind of error, e.g. `blank`; for images, the kind in predict's CSV.")
    message: str = Field(description="What went wrong and how to fix it.")


class Predictor:
    """A loaded classifier: 28x28 uint8 digits in, probabilities out, one call at a time.

    `run` takes uint8 `[N, 28, 28]` digits, white ink on black, and gives `[N, classes]` probabilities."""

    def __init__(
        self, run: Callable[[np.ndarray], np.ndarray], class_names: list[str], model: str, source: str,
        convention: str = "mnist",
    ) -> None:  # fmt: skip
        self._run, self.class_names, self.model, self.source = run, class_names, model, source
        self.convention = convention  # how a file becomes the model's input (`conventions.read`)
        self._lock = threading.Lock()  # one forward pass at a time: a model is not ours to share between threads

    def probabilities(self, digit: np.ndarray) -> np.ndarray:
        """uint8 `[28, 28]`, white on black -> float64 `[classes]` summing to 1."""
        with self._lock:
            probs = np.asarray(self._run(digit[None]), np.float64)[0]
        return probs / probs.sum()  # float32 probabilities sum to 1 only to ~1e-7; these to ~1e-16


def load_checkpoint(path: str | Path) -> Predictor:
    """The classifier saved in a checkpoint of `fit`, run by torch on one CPU thread; a `CheckpointError`
    (a `UserError`) where the file is no usable checkpoint."""
    import torch

    from digits_lightning.checkpoints import load_classifier

    model = load_classifier(path)

    def run(digits: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(digits).float().div_(255).unsqueeze(1)  # the model normalises [0, 1] images itself
        with torch.inference_mode():
            return model.evaluate(x).double().softmax(dim=1).numpy()  # (with its test-time augmentation, if any)

    convention = model.hparams.get("convention", "mnist")
    return Predictor(run, list(model.hparams.class_names), type(model).__name__, str(path), convention)


def load_onnx(path: str | Path) -> Predictor:
    """A model written by `export`, run by onnxruntime on one thread; a `UserError` where it cannot be."""
    from digits_lightning.onnx_runtime import OnnxClassifier

    model = OnnxClassifier(path, threads=1)
    return Predictor(model.probabilities, list(model.class_names), "ONNX (onnxruntime)", str(path), model.convention)


def decode(data: bytes, convention: str = "mnist") -> np.ndarray:
    """The bytes of an image file -> the model's uint8 `[28, 28]`; else an `ImageError` with the kind
    and message of the error column predict's CSV would have for the same file (`kind: message`)."""
    digit, error = conventions.read(data, convention)
    if error:
        kind, _, message = error.partition(": ")
        raise ImageError(kind, message)
    return digit




def png_base64(digit: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(digit, "L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def predict_bytes(predictor: Predictor, data: bytes) -> dict[str, Any]:
    """The whole prediction for one uploaded file, as the API returns it."""
    digit = decode(data, predictor.convention)
    probs = predictor.probabilities(digit)
    best = int(probs.argmax())
    return {
        "digit": best,
        "label": predictor.class_names[best],
        "confidence": float(probs[best]),
        "probabilities": [float(p) for p in probs],
        "image": png_base64(digit),
    }


class UploadTooLarge(Exception):
    """The request body passed the upload limit while it was being received."""


class LimitUploads:
    """ASGI middleware refusing bodies over `limit` bytes: at once where Content-Length says so, else
    (chunked uploads) as soon as the bytes received pass it, so no request is held in memory whole."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(self.limit)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise UploadTooLarge()
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> JSONResponse:
    return _error(
        413,
        "upload too large",
        f"the upload is over the server's limit of {limit / 1e6:g} MB: shrink or crop the image"
        " (or start the server with a larger --max_upload_mb)",
    )


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)


ERRORS = {  # the JSON bodies of the errors the API answers with
    413: {"model": ErrorBody, "description": "The upload is over the size limit (`--max_upload_mb`)."},
    415: {"model": ErrorBody, "description": "Neither multipart form data nor an image content type."},
    422: {"model": ErrorBody, "description": "No image, or one that cannot become a digit (not an image, damaged, blank)."},
}
IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY = {
    "required": True,
    "description": "The image as the multipart form field `image`, or as the raw body with an image content type.",
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}, "required": ["image"]}
        },
        **{kind: IMAGE_BODY for kind in ("image/png", "image/jpeg", "image/*")},
    },
}


def create_app(predictor: Predictor, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> FastAPI:
    """The page at `/`, `POST /api/predict`, `GET /api/health` and the OpenAPI docs at `/docs`."""
    if not max_upload_mb > 0:
        raise UserError(f"--max_upload_mb must be positive, got {max_upload_mb}")
    limit = int(max_upload_mb * 1e6)
    app = FastAPI(
        docs_url=None,  # FastAPI's own /docs page loads Swagger UI from a CDN: served from the package below
        title="digits_lightning",
        summary="Reads a handwritten digit in an image.",
        description=f"Serving `{Path(predictor.source).name}`. Images go through the same preprocessing as `predict`.",
    )
    app.add_middleware(LimitUploads, limit=limit)
    # As many decodes at once as cores: more would not finish sooner, and each holds a decoded image
    # (up to 100 MP) in memory, so a burst of large photos must not run 40 at a time (the thread pool's size).
    decoders = anyio.CapacityLimiter(usable_cpus())

    @app.exception_handler(UploadTooLarge)
    async def upload_too_large(request: Request, exc: UploadTooLarge) -> JSONResponse:
        return _too_large(limit)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not found", 405: "method not allowed"}.get(exc.status_code, "bad request")
        message = str(exc.detail)
        if exc.status_code == 405:
            message = f"{request.url.path} does not take {request.method}; it takes {exc.headers.get('Allow', '?')}"
        elif exc.status_code == 404:
            message = f"no such page: {request.url.path} (the API is at /api/predict and /api/health; docs at /docs)"
        return _error(exc.status_code, kind, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(422, "invalid request", problems or "the request does not match the API (see /docs)")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal error", f"{type(exc).__name__}: {exc}"[:500])

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # FastAPI's docs page, with Swagger UI's files from the swagger-ui-bundle package: no network at run time.
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title}: the API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )  # fmt: skip

    @app.get("/api/health", summary="Whether the server is up, and which model it serves")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.model, "file": predictor.source, "classes": predictor.class_names}

    @app.post(
        "/api/predict",
        summary="Predict the digit in one image",
        response_model=Prediction,
        responses=ERRORS,
        openapi_extra={"requestBody": REQUEST_BODY},
    )
    async def predict(request: Request):
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            async with request.form(max_files=1, max_fields=10) as form:
                upload = form.get("image")
                if not isinstance(upload, UploadFile):
                    return _error(422, "no image", NO_IMAGE)
                data = await upload.read()
        elif content_type.startswith("image/"):
            data = await request.body()
        else:
            return _error(
                415,
                "unsupported media type",
                f"cannot read a body of type {content_type or '(none)'!r}. {NO_IMAGE[0].upper()}{NO_IMAGE[1:]}",
            )
        try:
            return await anyio.to_thread.run_sync(predict_bytes, predictor, data, limiter=decoders)
        except ImageError as err:
            return _error(422, err.kind, str(err))

    return app


def newest_checkpoint(folder: Path = Path("checkpoints") / "cnn") -> Path:
    """The newest best checkpoint `fit` wrote for the default CNN; `UserError` if there is none."""
    best = sorted(folder.glob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not best:
        raise UserError(f"no checkpoint in {folder}: train one first (python -m digits_lightning fit), or pass --ckpt_path")
    return best[-1]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (port 0: any free one); `UserError` if it cannot be had."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535 (0: any free port), got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UserError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        hint = "pass another --port (0 picks a free one)" if err.errno == 98 else "check --host and --port"
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror}): {hint}") from None
    sock.set_inheritable(True)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and status 2, as every other command
        raise UserError(f"{message} (python -m digits_lightning serve --help)")


def parser() -> argparse.ArgumentParser:
    """argparse, not jsonargparse: an exported model is served with the minimal install."""
    p = _Parser(
        prog="python -m digits_lightning serve",
        description="A page to draw digits on, and POST /api/predict (docs at /docs), for one model.",
    )
    p.add_argument("--ckpt_path", help="the checkpoint (default: the newest best one in checkpoints/cnn/)")
    p.add_argument("--onnx_path", help="a model written by `export` instead of a checkpoint (needs onnxruntime, not torch)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every network; think first)")
    p.add_argument("--port", type=int, default=8000, help="the port (0: any free one; default 8000)")
    p.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="larger uploads are refused with 413 (default 20)")
    return p


def run(argv: list[str]) -> None:
    """Serve until interrupted; a `UserError` for a mistake in `argv`. Prints the address to open once
    the server listens."""
    import uvicorn

    args = parser().parse_args(argv)
    if args.ckpt_path and args.onnx_path:
        raise UserError("pass --ckpt_path or --onnx_path, not both: the server serves one model")
    if args.onnx_path:
        predictor = load_onnx(args.onnx_path)
    else:
        predictor = load_checkpoint(args.ckpt_path or newest_checkpoint())
    app = create_app(predictor, args.max_upload_mb)
    sock = bind(args.host, args.port)  # the last mistake to refuse: nothing process-wide has changed yet
    if not args.onnx_path:  # (onnxruntime's session has been given one thread already)
        import torch

        torch.set_num_threads(1)  # see the module docstring: one 28x28 image per forward pass
    # torch and Lightning leave hundreds of thousands of long-lived objects; a full collection scanning
    # them all stalled every request in flight for ~0.2 s (docs/serve.md). Frozen, they are never scanned again.
    gc.collect()
    gc.freeze()
    print(f"Serving {predictor.source} at {address(sock)} (the API's docs at {address(sock)}docs; Ctrl+C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it shut down for; here it is the way to stop
        print("Stopped.", flush=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m digits_lightning serve ARGS`: the user's mistakes end as one line on stderr, exit status 2."""
    try:
        run(sys.argv[1:] if argv is None else list(argv))
    except UserError as err:
        fail(err)
