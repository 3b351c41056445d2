"""`imagerec serve`: a trained run or exported model behind HTTP, with micro-batching, metrics and a web page.

FastAPI, uvicorn, python-multipart and prometheus-client (the `serve` extra) are imported only when serving.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagerec.errors import UserError

API_KEY_ENV = "IMAGEREC_API_KEY"
GRACEFUL_SHUTDOWN_S = 30  # in-flight requests get this long to finish after SIGINT/SIGTERM


def serve(
    target: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_batch: int = 16,
    max_wait_ms: float = 0.0,
    api_key: str | None = None,
    runtime: str | None = None,
    device: str = "auto",
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    max_files: int | None = None,
    log_level: str = "info",
    access_log: bool = True,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve `target` (a run directory or an exported model file) on `host`:`port` until interrupted.

    `workers` threads run batches on the one loaded model; a batch closes at `max_batch` images or `max_wait_ms`
    after its first request. Without `api_key`, the `IMAGEREC_API_KEY` environment variable is used when set.
    `max_bytes`, `max_pixels`, `max_files` bound each request (None: `Limits`' defaults). Port 0 picks a free
    port; `access_log` logs one line per request; `on_ready(url)` is called with the address once the socket is
    bound and the model loaded.
    """
    uvicorn = require_serve_extra()
    from imagerec.outputs.predict import load
    from imagerec.outputs.serve.app import Settings, create_app
    from imagerec.outputs.serve.inputs import Limits

    if workers < 1 or max_batch < 1 or max_wait_ms < 0:
        raise UserError("--workers and --max-batch must be at least 1, --max-wait-ms at least 0")
    given = {"max_bytes": max_bytes, "max_pixels": max_pixels, "max_files": max_files}
    limits = Limits(**{name: value for name, value in given.items() if value is not None})
    key = resolve_api_key(api_key)
    sock = bind(host, port)  # before loading the model: a port in use fails at once, and no one can take it after
    try:
        predictor = load(target, device=device, runtime=runtime)
        settings = Settings(max_batch=max_batch, max_wait_ms=max_wait_ms, workers=workers, api_key=key,
                            runtime=predictor.runtime, limits=limits)  # fmt: skip
        app = create_app(predictor, settings)
        config = uvicorn.Config(
            app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
        )
        url = _url(host, sock.getsockname()[1])
        print(f"serving {target} ({predictor.runtime}) on {url}  (page: {url}/, API: {url}/docs)", file=sys.stderr)
        if on_ready is not None:
            on_ready(url)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def resolve_api_key(api_key: str | None) -> str | None:
    """The key clients must send: `api_key`, else the IMAGEREC_API_KEY environment variable; None (no key) when
    neither is set or both are empty."""
    return api_key or os.environ.get(API_KEY_ENV) or None


def require_serve_extra() -> Any:
    """uvicorn, after checking that everything the service imports is installed."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import python_multipart  # noqa: F401  (form parsing)
        import uvicorn
    except ImportError as error:
        raise UserError(f"serving needs {error.name}: pip install 'imagerec[serve]'") from None
    return uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port`, or a UserError saying why there cannot be one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The protocol named explicitly: asyncio sets TCP_NODELAY only on connections of sockets whose `proto` is
    # IPPROTO_TCP, and `socket.create_server` leaves it 0. Without it every response waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            message = f"{host}:{port} is already in use; stop what listens there or choose another --port"
            raise UserError(message) from None
        if error.errno == errno.EACCES:
            raise UserError(f"{host}:{port}: permission denied (ports below 1024 need privileges)") from None
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
