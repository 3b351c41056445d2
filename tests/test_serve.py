"""The HTTP service against real tiny runs of each task: every endpoint, every bad input, micro-batching, the API
key, graceful shutdown and the CLI's refusals. Nothing here passes or fails by how long something took: batches are
filled to `max_batch` under a generous `max_wait_ms`, and a gate holds the model where a test needs it held."""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

import imagerec
from helpers import user_error
from imagerec.outputs.writers import render
from serve_runs import TASKS, WAIT_S, GatedPredictor, running_server, sample_images, trained_run

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'imagerec[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from imagerec.outputs.serve import API_KEY_ENV, bind, require_serve_extra  # noqa: E402
from imagerec.outputs.serve.app import Settings, create_app  # noqa: E402
from imagerec.outputs.serve.inputs import Limits  # noqa: E402

LONG_WAIT_MS = WAIT_S * 1000  # a batch can only close by filling up


@pytest.fixture(scope="module", params=TASKS)
def served(request, digits_dir, tmp_path_factory) -> tuple[str, Path, object, list[Path]]:
    """(task, run, predictor, sample images) for each task."""
    task = request.param
    run = trained_run(task, tmp_path_factory.getbasetemp(), digits_dir)
    return task, run, imagerec.load(run, device="cpu"), sample_images(task, run, digits_dir)


@pytest.fixture(scope="module")
def classifier(digits_dir, tmp_path_factory):
    run = trained_run("classify", tmp_path_factory.getbasetemp(), digits_dir)
    return run, imagerec.load(run, device="cpu"), sample_images("classify", run, digits_dir, count=4)


def _client(predictor, **settings) -> TestClient:
    return TestClient(create_app(predictor, Settings(**settings)))


def _files(paths: list[Path], field: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (p.name, p.read_bytes(), "image/png")) for p in paths]


def _png(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).save(buffer, format="PNG")  # noise: pixel data that does not compress away
    return buffer.getvalue()


def _claimed_size_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` pixels: a decompression bomb's calling card."""
    data = bytearray(_png())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


# --- every endpoint, every task -----------------------------------------------------------------------------------


def test_predict_answers_what_predict_json_prints(served):
    task, run, predictor, images = served
    with _client(predictor) as client:
        response = client.post("/v1/predict", files=_files(images))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = json.loads(render(predictor.predict(images, batch=len(images)), "json", predictor.info))
    for entry in expected:
        entry["source"] = Path(entry["source"]).name  # the service names a result by the uploaded file's name
    assert body["results"] == expected
    assert body["latency_ms"] > 0


def test_model_endpoint_describes_the_run(served):
    task, run, predictor, _ = served
    with _client(predictor) as client:
        model = client.get("/v1/model").json()
    record = json.loads((run / "model.json").read_text())
    assert model["task"] == task
    assert model["classes"] == record["classes"]
    assert model["preprocessing"] == record["preprocessing"]
    assert model["runtime"] == "eager"
    assert len(model["colours"]) == len(model["classes"])


def test_raw_body_single_file_and_overlay(served):
    task, _, predictor, images = served
    with _client(predictor) as client:
        raw = client.post(
            "/v1/predict?overlay=1", content=images[0].read_bytes(), headers={"content-type": "image/png"}
        )
        single = client.post("/v1/predict", files=_files(images[:1], field="file"))
    assert raw.status_code == single.status_code == 200
    entry = raw.json()["results"][0]
    assert entry["source"] == "<image 0>"
    assert {k: v for k, v in entry.items() if k not in ("source", "overlay")} == {
        k: v for k, v in single.json()["results"][0].items() if k != "source"
    }
    if task == "segment":  # masks come back drawn on the image, for clients without an RLE decoder
        png = base64.b64decode(entry["overlay"].removeprefix("data:image/png;base64,"))
        assert Image.open(io.BytesIO(png)).size == Image.open(images[0]).size
    else:
        assert "overlay" not in entry


def test_health_ready_metrics_docs_and_page(classifier):
    _, predictor, images = classifier
    with _client(predictor) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        client.post("/v1/predict", files=_files(images[:2]))
        metrics = client.get("/metrics").text
        schema = client.get("/openapi.json").json()
        docs = client.get("/docs").text
        page = client.get("/")
        script, style = client.get("/page.js"), client.get("/page.css")
    assert ready.status_code in (200, 503)  # warming up in the background: ready or not yet (see the gated test)
    assert 'imagerec_requests_total{endpoint="/v1/predict",status="200"} 1.0' in metrics
    assert "imagerec_request_latency_seconds_bucket" in metrics
    assert "imagerec_batch_size_count 1.0" in metrics
    assert "imagerec_batch_size_sum 2.0" in metrics
    assert "/v1/predict" in schema["paths"]
    assert "/v1/model" in schema["paths"]
    assert "/v1/predict" in docs
    assert "http" not in docs.replace("/openapi.json", "")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<input type="file"' in page.text
    assert "<label" in page.text
    assert script.status_code == style.status_code == 200
    assert "http://" not in page.text + script.text + style.text
    assert "https://" not in page.text + script.text


def test_ready_only_after_warm_up(classifier):
    _, predictor, _ = classifier
    gated = GatedPredictor(predictor)
    gated.gate.clear()
    with _client(gated) as client:
        assert gated.entered.wait(WAIT_S)  # the warm-up prediction is running, held at the gate
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        gated.gate.set()
        for _ in range(WAIT_S * 100):
            if client.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.01)
        assert client.get("/readyz").json() == {"status": "ready"}


# --- micro-batching -----------------------------------------------------------------------------------------------


def _post_concurrently(client: TestClient, requests: list[dict]) -> list:
    """Post `requests` at once, after the warm-up prediction has finished (so it cannot run between them)."""
    for _ in range(WAIT_S * 100):
        if client.get("/readyz").status_code == 200:
            break
        threading.Event().wait(0.01)
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda kwargs: client.post("/v1/predict", **kwargs), requests))


def test_concurrent_requests_share_one_batch(classifier):
    _, predictor, images = classifier
    gated = GatedPredictor(predictor)
    with _client(gated, max_batch=4, max_wait_ms=LONG_WAIT_MS) as client:
        responses = _post_concurrently(client, [{"files": _files([image])} for image in images])
        metrics = client.app.state.metrics
        batcher = client.app.state.batcher
    assert [r.status_code for r in responses] == [200] * 4
    assert [r.json()["results"][0]["source"] for r in responses] == [image.name for image in images]
    assert gated.sizes[1:] == [4]  # after the warm-up (1 image): the four requests in one batch
    assert batcher.batches == 1
    assert batcher.requests == 4
    assert metrics.value("imagerec_batch_size_count") == 1
    assert metrics.value("imagerec_batch_size_sum") == 4


def test_batches_group_requests_by_options(classifier):
    _, predictor, images = classifier
    gated = GatedPredictor(predictor)
    requests = [{"files": _files([image]), "params": {"topk": 1 + i % 2}} for i, image in enumerate(images)]
    with _client(gated, max_batch=2, max_wait_ms=LONG_WAIT_MS) as client:
        responses = _post_concurrently(client, requests)
    assert sorted(gated.sizes[1:]) == [2, 2]
    assert [len(r.json()["results"][0]["labels"]) for r in responses] == [1, 2, 1, 2]


def test_one_bad_request_does_not_fail_its_batch(classifier):
    """A request that fails inside the model (here: too large for whole-image segmentation is the real case; a
    predictor that refuses one image stands in) is answered alone; the others in its batch still succeed."""
    _, predictor, images = classifier

    class RefusesTiny(GatedPredictor):
        def predict(self, images, **kwargs):
            if any(image.size == (3, 3) for image in images):
                raise imagerec.UserError("3×3 images are refused")
            return super().predict(images, **kwargs)

    refusing = RefusesTiny(predictor)
    requests = [{"files": _files(images[:1])}, {"content": _png((3, 3)), "headers": {"content-type": "image/png"}}]
    with _client(refusing, max_batch=2, max_wait_ms=LONG_WAIT_MS) as client:
        good, bad = _post_concurrently(client, requests)
    assert good.status_code == 200
    assert bad.status_code == 422
    assert bad.json() == {"error": "3×3 images are refused"}


# --- bad input: a one-line JSON error, and the server keeps serving ------------------------------------------------


BAD_REQUESTS = {  # case: (request, status, words in the error, the metric's kind)
    "not an image": ({"content": b"hello, not an image"}, 400, "not an image", "not_an_image"),
    "truncated image": ({"content": _png((30, 30))[:400]}, 400, "truncated", "bad_image"),
    "empty body": ({"content": b""}, 400, "no image", "no_image"),
    "too many bytes": ({"content": b"x" * 5000}, 413, "--max-bytes", "too_many_bytes"),
    "too many pixels": ({"content": _claimed_size_png(64, 64)}, 413, "64×64 pixels", "too_many_pixels"),
    "decompression bomb": ({"content": _claimed_size_png(30_000, 30_000)}, 413, "--max-pixels", "too_many_pixels"),
    "too many files": (
        {"files": [("files", (f"{i}.png", _png(), "image/png")) for i in range(4)]}, 413, "--max-files",
        "too_many_files",
    ),
    "a path, not a file": ({"files": {"file": (None, "/etc/passwd")}}, 400, "no image", "no_image"),
    "a file in another field": (
        {"files": [("path", ("a.png", _png(), "image/png"))]}, 400, "'file' or 'files'", "bad_form"
    ),
    "unknown option": ({"content": _png(), "params": {"path": "/etc/passwd"}}, 422, "unknown option 'path'",
                       "bad_option"),
    "option of the wrong type": ({"content": _png(), "params": {"topk": "many"}}, 422, "expected int", "bad_option"),
    "option out of range": ({"content": _png(), "params": {"topk": 0}}, 422, "--topk 0", "bad_option"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_a_one_line_error(classifier, case):
    _, predictor, images = classifier
    kwargs, status, words, kind = BAD_REQUESTS[case]
    limits = Limits(max_bytes=4096, max_pixels=1000, max_files=3)
    with _client(predictor, limits=limits) as client:
        response = client.post("/v1/predict", **kwargs)
        after = client.post("/v1/predict", files=_files(images[:1]))  # the server keeps serving
        errors = client.app.state.metrics.value("imagerec_errors_total", {"kind": kind})
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    assert words in response.json()["error"]
    assert "\n" not in response.text
    assert "root:" not in response.text
    assert after.status_code == 200
    assert errors == 1


def test_uploaded_file_names_are_labels_never_paths(classifier):
    _, predictor, images = classifier
    with _client(predictor) as client:
        response = client.post("/v1/predict", files=[("file", ("../../etc/passwd", images[0].read_bytes(), "x"))])
    assert response.json()["results"][0]["source"] == "passwd"


# --- API key ------------------------------------------------------------------------------------------------------


def test_api_key(classifier):
    _, predictor, images = classifier
    with _client(predictor, api_key="s3cret") as client:
        missing = client.post("/v1/predict", files=_files(images[:1]))
        wrong = client.post("/v1/predict", files=_files(images[:1]), headers={"X-API-Key": "guess"})
        bearer = client.post("/v1/predict", files=_files(images[:1]), headers={"Authorization": "Bearer s3cret"})
        header = client.get("/v1/model", headers={"X-API-Key": "s3cret"})
        locked = [client.get(path).status_code for path in ("/v1/model", "/metrics")]
        open_ = [client.get(path).status_code for path in ("/healthz", "/")]
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"].startswith("API key required")
    assert wrong.json() == {"error": "wrong API key"}
    assert missing.headers["www-authenticate"] == "Bearer"
    assert bearer.status_code == header.status_code == 200
    assert locked == [401, 401]
    assert open_ == [200, 200]


# --- graceful shutdown, through real uvicorn ------------------------------------------------------------------------


def test_shutdown_finishes_in_flight_requests(classifier):
    import httpx

    _, predictor, images = classifier
    gated = GatedPredictor(predictor)
    app = create_app(gated, Settings(max_batch=1))
    with running_server(app) as (url, server, thread):
        httpx.get(f"{url}/healthz")
        assert gated.entered.wait(WAIT_S)  # warm-up done or running: wait for it to pass the open gate
        for _ in range(WAIT_S * 100):
            if app.state.ready:
                break
            threading.Event().wait(0.01)
        gated.entered.clear()
        gated.gate.clear()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/v1/predict", files=_files(images[:1]), timeout=WAIT_S)
            assert gated.entered.wait(WAIT_S)  # the request is inside the model
            server.should_exit = True  # what SIGTERM does
            gated.gate.set()
            response = pending.result()
        thread.join(WAIT_S)
        assert not thread.is_alive()
    assert response.status_code == 200
    assert response.json()["results"][0]["source"] == images[0].name


# --- the command line --------------------------------------------------------------------------------------------


def test_port_in_use_is_one_error_line(classifier, capsys, monkeypatch):
    run, _, _ = classifier
    with bind("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        line = user_error(capsys, monkeypatch, "serve", run, "--port", port)
    assert f"127.0.0.1:{port} is already in use" in line


def test_api_key_on_the_command_line_warns(classifier, capsys, monkeypatch):
    from imagerec.cli.main import main

    run, _, _ = classifier
    with bind("127.0.0.1", 0) as taken:
        args = ["imagerec", "serve", str(run), "--port", str(taken.getsockname()[1]), "--api-key", "k"]
        monkeypatch.setattr(sys, "argv", args)
        with pytest.raises(SystemExit) as caught:
            main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert caught.value.code == 2
    assert lines[0].startswith("warning: --api-key is visible to other users")
    assert API_KEY_ENV in lines[0]
    assert lines[1].startswith("error: ")
    assert len(lines) == 2


def test_api_key_comes_from_the_environment(monkeypatch):
    from imagerec.outputs.serve import resolve_api_key

    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert resolve_api_key(None) == "from-env"
    assert resolve_api_key("given") == "given"
    monkeypatch.setenv(API_KEY_ENV, "")
    assert resolve_api_key(None) is None


def test_missing_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(imagerec.UserError, match=r"pip install 'imagerec\[serve\]'"):
        require_serve_extra()
