"""Serving under load: `imagerec serve` on loopback, with and without micro-batching, against 1, 4 and 16 clients.

Each setting starts the real CLI in a subprocess (`imagerec serve RUN --port P --no-access-log`), waits for
/readyz, then runs N client threads (one keep-alive httpx connection each) that POST one real digit PNG per
request, REQUESTS each. It prints requests/s, p50/p95 latency as the client sees it, and errors (which must be 0).
The direct baseline decodes the same PNG and calls `predictor.predict([image], batch=1)` in this process, with the
server's thread count; the service's overhead is its p50 at one client against that p50. Client and server share
the machine's cores, as they would on one host. A benchmark, not a test: nothing is asserted but zero errors.

    python benchmarks/serve_load.py                     # trains a small digits run first (~30 s)
    python benchmarks/serve_load.py --run runs/digits   # an existing classification run
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

SETTINGS = {  # name: serve options
    "no batching": ["--max-batch", "1"],
    "batching, wait 0 ms": ["--max-batch", "16", "--max-wait-ms", "0"],
    "batching, wait 5 ms": ["--max-batch", "16", "--max-wait-ms", "5"],
}


def train_digits(folder: Path) -> Path:
    from rich.console import Console

    import imagerec

    data = imagerec.write_sample("digits", folder / "digits")
    run = imagerec.train(data, out=folder / "run", model="seed_cnn", imgsz=16, epochs=5, seed=0,
                         console=Console(file=io.StringIO()))  # fmt: skip
    return run.path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run: Path, options: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "imagerec", "serve", str(run), "--port", str(port), "--no-access-log", *options]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError("the server did not become ready in 60 s")


def load(url: str, image: bytes, clients: int, requests: int) -> dict:
    """`clients` threads × `requests` POSTs each; latencies in ms, throughput, errors."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)

    def client() -> None:
        mine, failed = [], 0
        with httpx.Client(timeout=60) as http:
            http.get(f"{url}/healthz")  # connect before the clock starts
            start_line.wait()
            for _ in range(requests):
                begin = time.perf_counter()
                response = http.post(f"{url}/v1/predict", files={"file": ("digit.png", image, "image/png")})
                mine.append((time.perf_counter() - begin) * 1000)
                failed += response.status_code != 200
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return {"clients": clients, "requests": len(latencies), "req_per_s": len(latencies) / wall,
            **percentiles(latencies), "errors": errors[0]}  # fmt: skip


def percentiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {"p50_ms": statistics.median(ordered), "p95_ms": ordered[int(0.95 * (len(ordered) - 1))]}


def direct(run: Path, image: bytes, repeats: int) -> dict:
    """Decode + `predictor.predict` at batch 1 in this process: what the service adds its overhead to."""
    from PIL import Image

    import imagerec

    predictor = imagerec.load(run, device="cpu")
    for _ in range(20):
        predictor.predict([Image.open(io.BytesIO(image))], batch=1)
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        decoded = Image.open(io.BytesIO(image))
        decoded.load()
        predictor.predict([decoded], batch=1)
        times.append((time.perf_counter() - begin) * 1000)
    return {"requests": repeats, "req_per_s": 1000 / statistics.mean(times), **percentiles(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a classification run (default: train a small digits run)")
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--clients", default="1,4,16")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as folder:
        run = args.run or train_digits(Path(folder))
        image = next(iter(sorted((Path(folder) / "digits").rglob("*.png"))), None) if args.run is None else None
        image_bytes = image.read_bytes() if image else _digit_png()
        print(json.dumps({"machine": machine(), "run": str(run), "image_bytes": len(image_bytes)}))
        baseline = direct(run, image_bytes, repeats=args.requests * 4)
        print(json.dumps({"setting": "direct predictor.predict, batch 1", **_rounded(baseline)}))
        rows = []
        for name, options in SETTINGS.items():
            server, url = start_server(run, options, Path(folder) / "server.log")
            try:
                for clients in map(int, args.clients.split(",")):
                    row = {"setting": name, **_rounded(load(url, image_bytes, clients, args.requests))}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                server.terminate()
                server.wait(60)
        single = [r for r in rows if r["clients"] == 1]
        for row in single:
            overhead = row["p50_ms"] / baseline["p50_ms"] - 1
            print(json.dumps({"setting": row["setting"], "overhead_p50_vs_direct": round(overhead, 3),
                              "added_ms": round(row["p50_ms"] - baseline["p50_ms"], 3)}))  # fmt: skip


def _digit_png() -> bytes:
    from imagerec.data.samples import write_sample

    with tempfile.TemporaryDirectory() as folder:
        return sorted(write_sample("digits", Path(folder) / "digits").rglob("*.png"))[0].read_bytes()


def _rounded(row: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


if __name__ == "__main__":
    main()
