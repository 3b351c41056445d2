"""`imagerec serve`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option


def serve(
    target: Annotated[Path, typer.Argument(help="Run directory or exported model file.", metavar="RUN_OR_EXPORT")],
    host: Annotated[str, Opt(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port to listen on (0: any free port).")] = 8000,
    workers: Annotated[int, Opt(help="Threads running batches on the one loaded model.")] = 1,
    max_batch: Annotated[int, Opt(help="Most images per model batch (1: no micro-batching).")] = 16,
    max_wait_ms: Annotated[float, Opt(help="Longest a request waits for others to share its batch (0: none).")] = 0.0,
    api_key: Annotated[
        str | None, Opt(help="Key clients must send (visible to other users in `ps`: prefer IMAGEREC_API_KEY).")
    ] = None,
    runtime: Annotated[
        str | None, Opt(help="Inference runtime, as for `imagerec predict` (default: eager, or the file's format).")
    ] = None,
    device: Annotated[str, Opt(help="auto, cpu or cuda.")] = "auto",
    max_bytes: Annotated[int | None, Opt(help="Largest request body in bytes (default 32 MiB).")] = None,
    max_pixels: Annotated[int | None, Opt(help="Largest image in pixels (default 40 million).")] = None,
    max_files: Annotated[int | None, Opt(help="Most images per request (default 16).")] = None,
    access_log: Annotated[bool, Opt(help="Log one line per request.")] = True,
) -> None:
    """Serve a model over HTTP: POST /v1/predict, GET /v1/model, /metrics, and a web page at /."""
    from imagerec.outputs.serve import API_KEY_ENV
    from imagerec.outputs.serve import serve as serve_model

    if api_key:
        print(
            f"warning: --api-key is visible to other users of this machine (ps, /proc); set {API_KEY_ENV} instead",
            file=sys.stderr,
        )
    serve_model(
        target, host=host, port=port, workers=workers, max_batch=max_batch, max_wait_ms=max_wait_ms,
        api_key=api_key, runtime=runtime, device=device, max_bytes=max_bytes, max_pixels=max_pixels,
        max_files=max_files, access_log=access_log,
    )  # fmt: skip
