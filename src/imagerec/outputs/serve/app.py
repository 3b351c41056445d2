"""The HTTP service: a FastAPI app over one loaded predictor.

Why FastAPI + uvicorn: they give us routing, OpenAPI and a graceful-shutdown server with four small pure-Python
dependencies, and leave the model in our process. LitServe, the alternative, is itself built on FastAPI + uvicorn
but runs inference in worker processes fed through multiprocessing queues (every request pickled across, a model
copy per worker) and batches all requests alike, whereas our batches must group requests by their per-call
options (`conf`, `topk`) on one shared model; what it would add over FastAPI we would mostly have to work around.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (Request) at run time,
# and they name classes imported inside create_app, where the optional dependency is imported.
import asyncio
import base64
import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from importlib import resources
from typing import Any

from PIL import Image

from imagerec.errors import UserError
from imagerec.outputs.serve.batching import MicroBatcher
from imagerec.outputs.serve.inputs import Limits, RequestError, decode, parse_body, parse_options, read_body
from imagerec.outputs.serve.metrics import ServiceMetrics

log = logging.getLogger("imagerec.serve")
PROTECTED = ("/v1/", "/metrics")  # what needs the API key when one is set; health checks and the page do not
INLINE_DECODE_BYTES = 64 * 1024  # smaller images decode on the event loop: a thread hop would cost more
# The page and its two files come from this server only; nothing may load from elsewhere.
PAGE_POLICY = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'"


@dataclass(frozen=True)
class Settings:
    """How the service batches and what it accepts; `runtime` is reported by /v1/model."""

    max_batch: int = 16
    max_wait_ms: float = 0.0  # batches still form while a batch runs (docs/benchmarks.md, Serving)
    workers: int = 1
    api_key: str | None = None
    runtime: str = "eager"
    limits: Limits = field(default_factory=Limits)


def create_app(predictor: Any, settings: Settings | None = None) -> Any:
    """The FastAPI app serving `predictor` (what `imagerec.load` returns: `info`, `task.result_type`, `predict`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher = MicroBatcher(
            partial(_predict_batch, predictor), max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000, workers=settings.workers, on_batch=metrics.observe_batch,
        )  # fmt: skip
        warm = asyncio.get_running_loop().create_task(_warm_up(app, predictor))
        yield
        await app.state.batcher.drain()  # uvicorn has let in-flight requests finish; now the queue is empty
        warm.cancel()

    app = FastAPI(
        title="imagerec", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Predictions of one trained imagerec model. /docs lists the endpoints without any external file.",
    )  # fmt: skip
    app.state.ready = False
    app.state.metrics = metrics
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    _add_api(app, predictor, settings, metrics)
    _add_page(app)
    return app


def _add_api(app: Any, predictor: Any, settings: Settings, metrics: ServiceMetrics) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    @app.post("/v1/predict", openapi_extra=PREDICT_BODY, summary="Predict uploaded images")
    async def predict(request: Request) -> Response:
        """Images as multipart `file`/`files` or as the raw body; options (`topk`, `conf`, `iou`, ...) in the query
        or form. Answers `{"results": [...], "latency_ms": ...}`, results as `imagerec predict --format json`."""
        return await _predict_response(request, predictor, settings, metrics)

    @app.get("/v1/model", summary="The model: task, classes, preprocessing, runtime")
    async def model(request: Request) -> Response:
        return _locked(request, settings, lambda: JSONResponse(describe(predictor, settings)))

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and warmed up")
    async def readyz() -> JSONResponse:
        if app.state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "warming up"}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.render()
        return _locked(request, settings, lambda: Response(body, media_type=content_type))


def _add_page(app: Any) -> None:
    from fastapi.responses import HTMLResponse, Response

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_asset("page.html"), headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/page.js", include_in_schema=False)
    async def script() -> Response:
        return Response(_asset("page.js"), media_type="text/javascript")

    @app.get("/page.css", include_in_schema=False)
    async def style() -> Response:
        return Response(_asset("page.css"), media_type="text/css")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page(app.openapi()), headers={"Content-Security-Policy": PAGE_POLICY})


async def _predict_response(request: Any, predictor: Any, settings: Settings, metrics: ServiceMetrics) -> Any:
    """The answer to POST /v1/predict: results, or a one-line JSON error with its status."""
    from fastapi.responses import JSONResponse

    try:
        _authorise(request, settings.api_key)
        return JSONResponse(await _answer(request, predictor, settings))
    except RequestError as error:
        metrics.errors.labels(kind=error.kind).inc()
        return JSONResponse({"error": error.message}, status_code=error.status, headers=_auth_header(error))
    except UserError as error:
        metrics.errors.labels(kind="bad_option").inc()
        return JSONResponse({"error": str(error).splitlines()[0]}, status_code=422)
    except Exception as error:  # the service keeps serving; the traceback goes to the log
        log.exception("prediction failed")
        metrics.errors.labels(kind="internal").inc()
        return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)


def _locked(request: Any, settings: Settings, respond: Any) -> Any:
    """`respond()` when the request carries the API key (or none is set), else a 401."""
    from fastapi.responses import JSONResponse

    try:
        _authorise(request, settings.api_key)
    except RequestError as error:
        return JSONResponse({"error": error.message}, status_code=401, headers=_auth_header(error))
    return respond()


PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
        for name, kind in (("topk", "integer"), ("conf", "number"), ("iou", "number"), ("overlay", "boolean"))
    ],
}


async def _answer(request: Any, predictor: Any, settings: Settings) -> dict[str, Any]:
    """Read, decode, batch and predict one request; the response body."""
    from starlette.concurrency import run_in_threadpool

    from imagerec.tasks.base import predict_options

    start = time.perf_counter()
    limits = settings.limits
    body = await read_body(request.headers, request.stream(), limits.max_bytes)
    uploads, fields = await parse_body(request.headers, body, limits)
    options, flags = parse_options({**request.query_params, **fields})
    predict_options(predictor.task, options)  # refuse bad values before they can join (and fail) a batch
    images = []
    for name, data in uploads:
        if len(data) <= INLINE_DECODE_BYTES:
            images.append(decode(data, name, limits.max_pixels))
        else:
            images.append(await run_in_threadpool(decode, data, name, limits.max_pixels))
    results = await request.app.state.batcher.submit(images, options)
    results = [replace(result, source=name) for result, (name, _) in zip(results, uploads, strict=True)]
    entries = [result.to_dict() for result in results]
    if flags["overlay"]:
        from imagerec.outputs.serve.overlay import overlays

        drawn = await run_in_threadpool(overlays, images, results, predictor.info)
        for entry, png in zip(entries, drawn, strict=True):
            if png is not None:
                entry["overlay"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return {"results": entries, "latency_ms": round((time.perf_counter() - start) * 1000, 3)}


def _predict_batch(predictor: Any, images: list[Image.Image], options: dict[str, Any]) -> list[Any]:
    return predictor.predict(images, batch=len(images), **options)


async def _warm_up(app: Any, predictor: Any) -> None:
    """One prediction on a blank image, so the first request does not pay for lazy initialisation; then ready."""
    info = predictor.info
    size = info.preprocessing.size
    blank = Image.new("L" if info.channels == 1 else "RGB", (size, size))
    await asyncio.get_running_loop().run_in_executor(None, partial(predictor.predict, [blank], batch=1))
    app.state.ready = True


def _authorise(request: Any, key: str | None) -> None:
    """Accept `Authorization: Bearer KEY` or `X-API-Key: KEY` when the server has a key."""
    if key is None:
        return
    given = request.headers.get("x-api-key")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if given is None and scheme.lower() == "bearer":
        given = token.strip()
    if given is None:
        raise RequestError(401, "API key required: send 'Authorization: Bearer <key>' or 'X-API-Key'", "no_api_key")
    if not secrets.compare_digest(given.encode(), key.encode()):
        raise RequestError(401, "wrong API key", "wrong_api_key")


def _auth_header(error: RequestError) -> dict[str, str] | None:
    return {"WWW-Authenticate": "Bearer"} if error.status == 401 else None


def describe(predictor: Any, settings: Settings) -> dict[str, Any]:
    """What GET /v1/model answers."""
    from imagerec.outputs.visualize import class_colour
    from imagerec.tasks.results import SegmentationMask

    info = predictor.info
    if issubclass(predictor.task.result_type, SegmentationMask):  # the overlay's tints: class 0 left clear
        colours = [_hex(info.colours[c]) if info.colours else class_colour(c - 1) for c in range(len(info.classes))]
    else:
        colours = [class_colour(i) for i in range(len(info.classes))]
    return {
        "task": info.task, "kind": info.kind, "model": info.model, "classes": list(info.classes),
        "colours": colours, "preprocessing": info.preprocessing.model_dump(mode="json"), "runtime": settings.runtime,
        "limits": {"max_bytes": settings.limits.max_bytes, "max_pixels": settings.limits.max_pixels,
                   "max_files": settings.limits.max_files},
        "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms, "workers": settings.workers},
    }  # fmt: skip


def _hex(rgb: list[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb[:3])


def _asset(name: str) -> str:
    return resources.files("imagerec.outputs.serve").joinpath(name).read_text(encoding="utf-8")


def _docs_page(schema: dict[str, Any]) -> str:
    """The OpenAPI schema as a plain HTML list (FastAPI's own /docs page loads Swagger UI from a CDN)."""
    from html import escape

    rows = []
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            params = ", ".join(p["name"] for p in operation.get("parameters", []))
            rows.append(
                f"<li><code>{method.upper()} {escape(path)}</code> {escape(operation.get('summary', ''))}"
                + (f" <small>(query: {escape(params)})</small>" if params else "")
                + "</li>"
            )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>imagerec API</title>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'></head><body>"
        f"<h1>imagerec API</h1><p>{escape(schema['info'].get('description', ''))}</p><ul>{''.join(rows)}</ul>"
        "<p>The machine-readable schema: <a href='/openapi.json'>/openapi.json</a>.</p></body></html>"
    )


def _version() -> str:
    from importlib.metadata import version

    return version("imagerec")


class _MetricsMiddleware:
    """Counts every response by endpoint and status and times it (pure ASGI: no per-request task or copy)."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - start)
