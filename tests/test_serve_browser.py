"""The page of `imagerec serve` in a real headless Chromium (Debian's, driven by Playwright; no browser download),
against a real uvicorn server of a tiny run of each task: an image chosen through the file input comes back with its
labels and probabilities, its boxes or its mask legend, and the latency; at a phone's 390 px nothing scrolls
sideways; no request leaves the server and the console stays clean. The browser is found as in
test_report_browser.py (IMAGEREC_BROWSER, else /usr/bin/chromium, else skip)."""

from __future__ import annotations

import os

import pytest

import imagerec
from serve_runs import TASKS, running_server, sample_images, trained_run
from test_report_browser import BROWSER_ARGS, browser_path

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'imagerec[serve]'")

TIMEOUT_MS = 60_000  # a bound against hanging, never a measured time


@pytest.fixture(scope="module")
def chromium():
    """A launched headless Chromium, shared by the module's tests."""
    executable = browser_path()
    if os.environ.get("IMAGEREC_BROWSER"):
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        yield browser
        browser.close()


def _expected_text(task: str, result: dict) -> list[str]:
    """What the page must show for `result` (the JSON of the same image from /v1/predict)."""
    if task == "classify":
        return [result["labels"][0], f"{100 * result['probs'][0]:.1f}%"]
    if task == "detect":
        return [f"{o['label']} {100 * o['score']:.1f}%" for o in result["objects"][:3]] or ["no object found"]
    total = sum(result["areas"].values())
    return [f"{name} {100 * n / total:.1f}% of pixels" for name, n in result["areas"].items() if n]


@pytest.mark.parametrize("task", TASKS)
def test_page_shows_the_prediction_of_an_uploaded_image(chromium, task, digits_dir, tmp_path_factory):
    import httpx

    from imagerec.outputs.serve.app import create_app

    run = trained_run(task, tmp_path_factory.getbasetemp(), digits_dir)
    image = sample_images(task, run, digits_dir, count=1)[0]
    errors: list[str] = []
    requests: list[str] = []
    with running_server(create_app(imagerec.load(run, device="cpu"))) as (url, _, _):
        expected = httpx.post(f"{url}/v1/predict", files={"file": (image.name, image.read_bytes())}).json()
        page = chromium.new_page(viewport={"width": 390, "height": 844})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        try:
            page.goto(f"{url}/", wait_until="load")
            page.wait_for_function("document.getElementById('model').textContent.includes('runtime')")
            page.get_by_label("Choose one or more images").set_input_files(str(image))
            result = page.locator("article.result")
            result.wait_for(timeout=TIMEOUT_MS)
            text = result.inner_text()
            status = page.locator("#status").inner_text()
            wide = page.evaluate("document.documentElement.scrollWidth")
            drawn = page.evaluate(
                "Array.from(document.querySelectorAll('.figure img, .figure canvas'))"
                ".filter(e => (e.naturalWidth || e.width) > 0).length"
            )
        finally:
            page.close()
    assert image.name in text
    for words in _expected_text(task, expected["results"][0]):
        assert words in text, text
    assert status.startswith("Latency: ")
    assert " ms on the server" in status
    assert drawn == 1
    assert wide <= 390  # no horizontal scroll on a phone
    assert errors == []
    assert all(u.startswith((url, "blob:", "data:")) for u in requests), requests
