"""A short, bounded load test of `serve`: drawn 280x280 PNGs posted to /api/predict over loopback.

Starts the real server (`digits_lightning.serve.main`, as `python -m digits_lightning serve` runs
it) in its own process on a free port of 127.0.0.1, sends a warm-up, then `--requests` predictions
from `--concurrency` keep-alive connections at a time, and prints:
  - predictions per second and the latency percentiles (p50, p95, p99, max), client-side, per request;
  - the number of errors (any answer but a 200 with ten probabilities summing to 1);
  - the server's resident memory after the warm-up and after the run (target: within 20 MB);
  - the CPU time the server and the client spent per prediction, which other work on the machine
    does not change as it changes the rate (with the load average, to judge the rate by);
  - for scale, the server's own work per image measured in this process: decoding and the model.
Targets on a 2-core CPU: >= 200 predictions/s, p95 <= 50 ms. The exit status is 1 where any request
failed or the memory grew, on any machine.

    python benchmarks/serve_load.py                          # newest best checkpoint in checkpoints/cnn/
    python benchmarks/serve_load.py --ckpt_path my.ckpt --requests 400 --concurrency 4
    python benchmarks/serve_load.py --onnx_path model.onnx   # a model from `export`, run by onnxruntime

Without a checkpoint it trains the default CNN for one epoch on a tiny synthetic set in a temporary
folder: the network and so the work per request are the default CNN's; only its answers are worse.
The client is a minimal HTTP/1.1 client on asyncio streams (requests built beforehand), so that as
little as possible of the two cores goes to the client rather than the server. It only ever connects
to 127.0.0.1, and stops after `--requests` requests or `--deadline_s` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.hardware import describe  # noqa: E402
from digits_lightning import serve  # noqa: E402

HOST = "127.0.0.1"  # loopback only, whatever the arguments
BOUNDARY = "----digits-serve-load"
# Pen strokes of a few digits on the page's 280x280 canvas (x, y in canvas pixels).
STROKES = {
    0: [[(140 + 60 * math.sin(t * math.pi / 10), 140 - 95 * math.cos(t * math.pi / 10)) for t in range(21)]],
    1: [[(150, 50), (140, 240)]],
    2: [[(80, 90), (110, 55), (160, 50), (195, 85), (185, 130), (80, 235), (210, 235)]],
    4: [[(170, 240), (170, 50), (70, 180), (215, 180)]],
    7: [[(70, 60), (210, 60), (120, 240)]],
}


def drawings(n: int, seed: int = 0) -> list[tuple[int, bytes]]:
    """`n` drawn digits as the page sends them: RGBA PNGs of an 18-pixel black pen on white, each
    one's strokes moved, scaled and wobbled a little so that no two files are alike."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        digit = list(STROKES)[i % len(STROKES)]
        scale, dx, dy = rng.uniform(0.7, 1.1), rng.uniform(-30, 30), rng.uniform(-20, 20)
        image = Image.new("RGBA", (280, 280), "white")
        pen = ImageDraw.Draw(image)
        for points in STROKES[digit]:
            moved = [(140 + (x - 140) * scale + dx + rng.normal(0, 2), 140 + (y - 140) * scale + dy + rng.normal(0, 2)) for x, y in points]
            pen.line(moved, fill="black", width=18, joint="curve")
        buffer = __import__("io").BytesIO()
        image.save(buffer, format="PNG")
        out.append((digit, buffer.getvalue()))
    return out


def request_bytes(port: int, png: bytes) -> bytes:
    """One complete keep-alive POST /api/predict with the PNG as the multipart field `image`."""
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="drawing.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    return head + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    return status, await reader.readexactly(length)


def good(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    answer = json.loads(body)
    return len(answer["probabilities"]) == 10 and abs(sum(answer["probabilities"]) - 1) < 1e-6


async def load(port: int, requests: list[bytes], concurrency: int, deadline: float) -> tuple[list[float], int, float]:
    """Sends `requests` over `concurrency` connections; returns the latencies (s), the errors and the time taken."""
    queue = list(reversed(range(len(requests))))
    latencies, errors = [], 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while queue and time.monotonic() < deadline:
                request = requests[queue.pop()]
                start = time.perf_counter()
                try:
                    status, body = await asyncio.wait_for(exchange(reader, writer, request), 10)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, AttributeError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                    continue
                latencies.append(time.perf_counter() - start)
                errors += not good(status, body)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def cpu_s(pid: int) -> float:
    """CPU time (user + system) the process has used, in seconds: unlike the rate, it does not depend
    on what else the machine is running."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def tiny_checkpoint(folder: Path) -> Path:
    from digits_lightning.cli import main
    from tests.helpers import write_tiny_mnist

    data = write_tiny_mnist(folder / "data")
    args = ["fit", f"--data.data_dir={data}", "--data.val_size=200", "--trainer.max_epochs=1", "--test_after_fit=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", f"--checkpoint.dirpath={folder / 'ckpt'}",
            "--trainer.logger=false", f"--trainer.default_root_dir={folder}"]  # fmt: skip
    main(args)
    return next((folder / "ckpt").glob("epoch=*.ckpt"))


def in_process(predictor: serve.Predictor, files: list[tuple[int, bytes]]) -> tuple[float, float]:
    """Median ms per image of the server's two steps, decoding and the model, one at a time here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs it
    decode, model = [], []
    try:
        for _, data in files[:100]:
            t0 = time.perf_counter()
            digit = serve.decode(data, predictor.convention)
            t1 = time.perf_counter()
            predictor.probabilities(digit)
            model.append(time.perf_counter() - t1)
            decode.append(t1 - t0)
    finally:
        torch.set_num_threads(threads)
    return 1e3 * statistics.median(decode), 1e3 * statistics.median(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", type=Path, default=None, help="default: the newest best in checkpoints/cnn/, else a tiny fit")
    parser.add_argument("--onnx_path", type=Path, default=None, help="serve this model from `export` instead of a checkpoint")
    parser.add_argument("--requests", type=int, default=400, help="measured requests (at most 2000)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4, help="connections sending at once")
    parser.add_argument("--deadline_s", type=float, default=120.0, help="the run stops after this long, whatever is left")
    args = parser.parse_args()
    args.requests = min(args.requests, 2000)
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt_path
        if args.onnx_path:
            model, predictor = ["--onnx_path", args.onnx_path], serve.load_onnx(args.onnx_path)
        elif ckpt is None:
            try:
                ckpt = serve.newest_checkpoint()
            except serve.UserError:
                print("no checkpoint in checkpoints/cnn/: training the default CNN for one epoch on a tiny synthetic set")
                ckpt = tiny_checkpoint(Path(tmp))
        if not args.onnx_path:
            model, predictor = ["--ckpt_path", ckpt], serve.load_checkpoint(ckpt)
        print(f"model: {predictor.model} from {predictor.source}")
        files = drawings(max(args.requests, args.warmup, 100))
        sizes = [len(data) for _, data in files]
        print(f"{len(files)} drawn 280x280 RGBA PNGs, {statistics.median(sizes) / 1e3:.1f} kB median")
        decode_ms, model_ms = in_process(predictor, files)

        command = [sys.executable, "-c", "import sys; from digits_lightning.serve import main; main(sys.argv[1:])"]
        server = subprocess.Popen([*command, f"{model[0]}={model[1]}", f"--host={HOST}", "--port=0"], stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline()
            found = re.search(rf"http://{re.escape(HOST)}:(\d+)/", line)
            if not found:
                raise SystemExit(f"the server did not start: {line!r}")
            port = int(found.group(1))
            requests = [request_bytes(port, data) for _, data in files]
            deadline = time.monotonic() + args.deadline_s
            _, warm_errors, _ = asyncio.run(load(port, requests[: args.warmup], args.concurrency, deadline))
            rss_warm, cpu_warm, client_warm = rss_mb(server.pid), cpu_s(server.pid), time.process_time()
            latencies, errors, elapsed = asyncio.run(load(port, requests[: args.requests], args.concurrency, deadline))
            rss_after, cpu_after, client_after = rss_mb(server.pid), cpu_s(server.pid), time.process_time()
        finally:
            server.terminate()
            server.wait(20)

    done = len(latencies)
    ms = [1e3 * t for t in latencies]
    print(f"{done} predictions ({args.concurrency} at a time, after {args.warmup} to warm up) in {elapsed:.2f} s:"
          f" {done / elapsed:.0f} predictions/s")  # fmt: skip
    print(f"latency ms: p50 {percentile(ms, 50):.1f}, p95 {percentile(ms, 95):.1f}, p99 {percentile(ms, 99):.1f}, max {max(ms):.1f}")
    print(f"errors: {errors + warm_errors} (warm-up {warm_errors}); unanswered: {args.requests - done}")
    print(f"server RSS: {rss_warm:.1f} MB after the warm-up, {rss_after:.1f} MB after the run ({rss_after - rss_warm:+.1f} MB)")
    print(f"CPU per prediction: server {1e3 * (cpu_after - cpu_warm) / max(done, 1):.1f} ms,"
          f" client {1e3 * (client_after - client_warm) / max(done, 1):.1f} ms; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"server work per image, in process, one at a time: decoding {decode_ms:.2f} ms, model {model_ms:.2f} ms")
    checks = {
        ">= 200 predictions/s": done / elapsed >= 200,
        "p95 <= 50 ms": percentile(ms, 95) <= 50,
        "no errors": errors + warm_errors == 0 and done == args.requests,
        "RSS within 20 MB": abs(rss_after - rss_warm) <= 20,
    }
    print("targets: " + ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in checks.items()))
    if not (checks["no errors"] and checks["RSS within 20 MB"]):
        raise SystemExit(1)  # a fault on any machine; the speed targets are the 2-core CPU's


if __name__ == "__main__":
    main()
