"""report.html in a real headless Chromium (Debian's, driven by Playwright; no browser is ever downloaded), on a
desktop (1280×900) and a phone (390×844): it loads from file:// with no console error and no request leaving the
file, every section heading shows, every image decodes, the phone never scrolls the page sideways, a thumbnail
opens full size and closes again, the per-image table sorts on a click, and a full-page screenshot per width is
kept as a test artefact.

`make test` sets IMAGEREC_BROWSER (and installs Chromium there): then a missing browser fails the test instead of
skipping it. Add a task by adding a builder to REPORTS: it gets the pytest request and a folder, and returns the
path of a report.html.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

import imagerec

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
DEFAULT_BROWSER = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _classification_report(request: pytest.FixtureRequest, folder: Path) -> Path:
    digits_dir = request.getfixturevalue("digits_dir")
    run = imagerec.train(
        digits_dir, out=folder / "run", epochs=2, imgsz=8, model="seed_cnn", seed=0, console=Console(file=io.StringIO())
    )
    return run.path / "report.html"


def _scenes_report(task: str, model: str) -> Callable[[pytest.FixtureRequest, Path], Path]:
    """A tiny run on digit scenes (boxes for detection, masks for segmentation); training writes its report."""

    def build(request: pytest.FixtureRequest, folder: Path) -> Path:
        from imagerec.data.samples import write_digit_scenes

        scenes = write_digit_scenes(folder / "scenes", n_train=24, n_val=8, n_test=8, size=64)
        run = imagerec.train(
            scenes, task=task, model=model, out=folder / "run", epochs=1, imgsz=64, batch=8, flip=False,
            precision="32", seed=0, console=Console(file=io.StringIO()),
        )  # fmt: skip
        return run.path / "report.html"

    return build


REPORTS: dict[str, Callable[[pytest.FixtureRequest, Path], Path]] = {
    "classify": _classification_report,
    "detect": _scenes_report("detect", "fcos_lite"),
    "segment": _scenes_report("segment", "unet"),
}


def browser_path() -> str:
    """The Chromium to drive: IMAGEREC_BROWSER must exist when set; otherwise skip without /usr/bin/chromium."""
    given = os.environ.get("IMAGEREC_BROWSER")
    path = given or DEFAULT_BROWSER
    if not Path(path).is_file():
        if given:
            pytest.fail(f"IMAGEREC_BROWSER={given}: no such browser (make test installs Debian's chromium there)")
        pytest.skip(f"no Chromium at {DEFAULT_BROWSER} and IMAGEREC_BROWSER not set (make test installs one)")
    return path


@pytest.fixture(params=sorted(REPORTS))
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(task, path of a report.html written for a real tiny run of that task)."""
    return request.param, REPORTS[request.param](request, tmp_path_factory.mktemp(f"report-{request.param}"))


def _keep(screenshot: Path) -> None:
    """Copy the screenshot to test-artifacts/ when git ignores that folder (so it never ends up committed)."""
    try:
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "test-artifacts/"], cwd=REPO_ROOT, capture_output=True, check=False
        ).returncode == 0  # fmt: skip
    except OSError:  # no git
        return
    if ignored:
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, ARTIFACTS / screenshot.name)


VIEWPORTS = {"1280": {"width": 1280, "height": 900}, "390": {"width": 390, "height": 844}}
BROKEN_IMAGES = "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length"


def test_report_in_headless_chromium(report, tmp_path):
    task, page_path = report
    executable = browser_path()
    if os.environ.get("IMAGEREC_BROWSER"):
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    errors: list[str] = []
    requests: list[str] = []
    shots = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            for width, viewport in VIEWPORTS.items():
                page = browser.new_page(viewport=viewport)
                page.on(
                    "console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None
                )
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}"))
                page.on("request", lambda r: requests.append(r.url))
                page.goto(page_path.resolve().as_uri(), wait_until="load")
                _sections_show(page)
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), width
                shots.append(tmp_path / f"report-{task}-{width}.png")
                page.screenshot(path=str(shots[-1]), full_page=True)
                _lightbox_opens_and_closes(page)
                if width == "390":
                    shots.append(tmp_path / f"report-{task}-{width}-open.png")
                    page.locator("figure.thumb a.open").first.click()
                    page.screenshot(path=str(shots[-1]))
                    page.goto(page_path.resolve().as_uri(), wait_until="load")
                _table_sorts(page)
                page.close()
        finally:
            browser.close()
    assert errors == []
    assert all(url.startswith(("file://", "data:")) for url in requests), requests
    for screenshot in shots:
        assert screenshot.stat().st_size > (10_000 if screenshot.stem.endswith("0") else 2_000)  # full page, or open
        _keep(screenshot)


def _sections_show(page) -> None:
    """Every section's heading visible, each linked from the contents, every image decoded."""
    headings = page.locator("section > h2")
    sections = page.locator("section")
    assert sections.count() >= 8
    assert headings.count() == sections.count()
    for i in range(headings.count()):
        heading = headings.nth(i)
        heading.scroll_into_view_if_needed()
        assert heading.is_visible(), heading.inner_text()
    assert page.locator("nav#contents a").count() == sections.count()
    assert page.evaluate(BROKEN_IMAGES) == 0
    assert page.evaluate("document.images.length") >= 6


def _lightbox_opens_and_closes(page) -> None:
    """A click on a gallery thumbnail lays it over the window, larger; the close link puts it back."""
    thumb = page.locator("figure.thumb").first
    image = thumb.locator("img")
    thumb.scroll_into_view_if_needed()
    small = image.bounding_box()["width"]
    thumb.locator("a.open").click()
    target = thumb.get_attribute("id")
    assert page.evaluate("location.hash") == f"#{target}"
    assert thumb.evaluate("e => getComputedStyle(e).position") == "fixed"
    large = image.bounding_box()
    assert large["width"] > small
    assert large["width"] <= page.viewport_size["width"]  # within the window: nothing to scroll
    thumb.locator("a.close").click(position={"x": 5, "y": 5})
    assert thumb.evaluate("e => getComputedStyle(e).position") == "static"
    assert image.bounding_box()["width"] == pytest.approx(small)


def _table_sorts(page) -> None:
    """A click on a numeric column's header sorts the per-image table by it, ascending then descending."""
    table = page.locator("#predictions table.sortable")
    values = """(t, c) => Array.from(t.tBodies[0].rows).map(r => r.cells[c].dataset.v)
        .filter(v => v !== undefined).map(Number)"""
    column = table.evaluate(
        "t => Array.from(t.tBodies[0].rows[0].cells).findIndex((c, i) => i > 0 && 'v' in c.dataset)"
    )
    assert column > 0
    before = table.evaluate(values, column)
    header = table.locator("th button").nth(column)
    header.click()
    ascending = table.evaluate(values, column)
    assert ascending == sorted(before)
    assert table.locator("th").nth(column).get_attribute("aria-sort") == "ascending"
    header.click()
    assert table.evaluate(values, column) == sorted(before, reverse=True)
