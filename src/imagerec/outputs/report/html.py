"""Rendering report sections into one self-contained report.html: every image embedded as a base64 PNG data URI
(and also written beside it as a PNG file), inline CSS, no scripts, fonts or network requests; a content security
policy in the page makes a browser refuse anything else."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imagerec.outputs.report.blocks import Block, Figure, Gallery, ReportContext, Section, Table
from imagerec.runs import atomic_write, write_text
from imagerec.safe_read import printable

DPI = 100
SHEET_CELL = 160  # pixels per image in the PNG contact sheet written for each gallery
SHEET_COLUMNS = 6
CAPTION_HEIGHT = 20


@dataclass(frozen=True)
class Picture:
    """One PNG: the file it is written to beside report.html, its bytes and its size in pixels."""

    name: str
    data: bytes
    width: int
    height: int

    @property
    def uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.data).decode("ascii")


@dataclass
class Pictures:
    """The PNGs of a report: one per Figure and one contact sheet per Gallery (written as files), and each
    gallery image (embedded only), keyed by the block's id()."""

    files: dict[int, Picture]
    thumbnails: dict[int, list[Picture]]


def render(ctx: ReportContext, sections: list[Section]) -> Path:
    """Write report.html and its PNGs into `ctx.out`; returns the path of report.html."""
    pictures = rasterize(sections)
    text = document(ctx, sections, pictures)
    for picture in pictures.files.values():
        atomic_write(ctx.out / picture.name, lambda tmp, data=picture.data: tmp.write_bytes(data))
    path = ctx.out / "report.html"
    write_text(path, text)
    return path


def rasterize(sections: list[Section]) -> Pictures:
    """Draw every figure and gallery to PNG (the slow part of rendering)."""
    pictures = Pictures({}, {})
    names: set[str] = set()
    for section in sections:
        for n, block in enumerate(section.blocks):
            if isinstance(block, Figure):
                picture = figure_png(block)
            elif isinstance(block, Gallery):
                picture = sheet_png(block, f"{section.id}_{_slug(block.title) or n}.png")
                pictures.thumbnails[id(block)] = [png(image, "") for image, _ in block.images]
            else:
                continue
            if picture.name in names:
                raise ValueError(f"two report images are both named {picture.name!r}")
            names.add(picture.name)
            pictures.files[id(block)] = picture
    return pictures


def figure_png(block: Figure) -> Picture:
    buffer = io.BytesIO()
    block.figure.savefig(buffer, format="png", dpi=DPI)
    width, height = (round(v * DPI) for v in block.figure.get_size_inches())
    block.figure.clear()  # figures are not kept by pyplot; clearing frees their artists at once
    return Picture(block.name, buffer.getvalue(), width, height)


def png(image: np.ndarray, name: str) -> Picture:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return Picture(name, buffer.getvalue(), int(image.shape[1]), int(image.shape[0]))


def sheet_png(gallery: Gallery, name: str) -> Picture:
    """The gallery as one contact sheet: each image fitted into a square cell (small ones enlarged by whole
    factors, so pixels stay sharp) with its caption under it."""
    from matplotlib import font_manager

    count = max(1, len(gallery.images))
    columns = min(SHEET_COLUMNS, count)
    rows = -(-count // columns)
    cell_height = SHEET_CELL + CAPTION_HEIGHT
    sheet = Image.new("RGB", (columns * SHEET_CELL, rows * cell_height), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size=12)
    for i, (image, caption) in enumerate(gallery.images):
        tile = Image.fromarray(np.ascontiguousarray(image))
        side = max(tile.size)
        if side < SHEET_CELL:
            factor = max(1, (SHEET_CELL - 8) // side)
            tile = tile.resize((tile.width * factor, tile.height * factor), Image.Resampling.NEAREST)
        else:
            tile.thumbnail((SHEET_CELL - 8, SHEET_CELL - 8))
        x, y = (i % columns) * SHEET_CELL, (i // columns) * cell_height
        sheet.paste(tile, (x + (SHEET_CELL - tile.width) // 2, y + (SHEET_CELL - tile.height) // 2))
        draw.text((x + SHEET_CELL // 2, y + SHEET_CELL + 2), _fit(draw, caption, font), fill="black", font=font,
                  anchor="ma")  # fmt: skip
    return png(np.asarray(sheet), name)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any) -> str:
    while text and draw.textlength(text, font=font) > SHEET_CELL - 6:
        text = text[:-2] + "…"
    return text


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# -- HTML --------------------------------------------------------------------------------------------------------
def document(ctx: ReportContext, sections: list[Section], pictures: Pictures) -> str:
    """The whole page as text."""
    name = ctx.run.path.resolve().name
    info = ctx.info
    when = datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    version = ctx.resolved.versions.get("imagerec", "")
    subtitle = f"{info.task} · {info.model} · {len(info.classes)} classes"
    if ctx.split is not None:
        subtitle += f" · evaluated on the {ctx.split} split ({len(ctx.samples)} images)"
    toc = "\n".join(f'<li><a href="#{_e(s.id)}">{_e(s.title)}</a></li>' for s in sections)
    body = "\n".join(_section(s, pictures) for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="imagerec {_e(str(version))}">
<title>imagerec report: {_e(name)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<header>
<h1>imagerec report: {_e(name)}</h1>
<p class="subtitle">{_e(subtitle)}</p>
<p class="subtitle">{_e(str(ctx.run.path))} · written {_e(when)}</p>
</header>
<nav id="contents" aria-label="Contents">
<h2>Contents</h2>
<ol>
{toc}
</ol>
</nav>
<main>
{body}
</main>
</body>
</html>
"""


def _section(section: Section, pictures: Pictures) -> str:
    blocks = "\n".join(_block(b, pictures) for b in section.blocks)
    return f'<section id="{_e(section.id)}">\n<h2>{_e(section.title)}</h2>\n{blocks}\n</section>'


def _block(block: Block, pictures: Pictures) -> str:
    if isinstance(block, Figure):
        picture = pictures.files[id(block)]
        caption = f"<figcaption>{_prose(block.caption)}</figcaption>" if block.caption else ""
        return (
            f'<figure class="plot"><img src="{picture.uri}" width="{picture.width}" height="{picture.height}" '
            f'alt="{_e(block.caption or block.name)}" data-file="{_e(picture.name)}">{caption}</figure>'
        )
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Gallery):
        return _gallery(block, pictures)
    return f"<p>{_prose(block.text)}</p>"


def _table(table: Table) -> str:
    head = "".join(f"<th>{_e(str(c))}</th>" for c in table.columns) if any(table.columns) else ""
    rows = []
    for row in table.rows:
        cells = "".join(
            f'<td class="num">{_e(cell(v))}</td>' if _numeric(v) else f"<td>{_e(cell(v))}</td>" for v in row
        )
        rows.append(f"<tr>{cells}</tr>")
    caption = f"<caption>{_prose(table.caption)}</caption>" if table.caption else ""
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f'<div class="table"><table>{caption}{thead}<tbody>{"".join(rows)}</tbody></table></div>'


def _numeric(value: Any) -> bool:
    """Whether a cell is right-aligned: numbers, and the dash standing for a missing one."""
    if value is None or value == "—":
        return True
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def cell(value: Any) -> str:
    """A table cell as text: floats to 4 decimals (very small or large ones in 3 significant digits), None as —."""
    if value is None:
        return "—"
    if isinstance(value, float | np.floating):
        value = float(value)
        if value != value:  # NaN
            return "—"
        if value == 0 or 0.001 <= abs(value) < 1e6:
            return f"{value:.4f}"
        return f"{value:.3g}"
    return str(value)


def _gallery(gallery: Gallery, pictures: Pictures) -> str:
    sheet = pictures.files[id(gallery)]
    items = []
    for picture, (_, caption) in zip(pictures.thumbnails[id(gallery)], gallery.images, strict=True):
        small = " small" if max(picture.width, picture.height) < 64 else ""
        items.append(
            f'<figure class="thumb"><img class="{small.strip()}" src="{picture.uri}" width="{picture.width}" '
            f'height="{picture.height}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
        )
    grid = "".join(items) if items else '<p class="empty">No images.</p>'
    caption = f"<p>{_prose(gallery.caption)}</p>" if gallery.caption else ""
    return (
        f'<div class="gallery" data-file="{_e(sheet.name)}"><h3>{_e(gallery.title)}</h3>{caption}'
        f'<div class="grid">{grid}</div></div>'
    )


def _e(text: str) -> str:
    return html.escape(printable(text), quote=True)


def _prose(text: str) -> str:
    """Escaped text whose `backticked` commands and names are set as code, not shown with their backticks."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


CSS = """
:root { color-scheme: light; --ink: #1b1b1b; --muted: #5b5b5b; --line: #d9d9d9; --accent: #0072B2; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1180px; padding: 1.5rem 2rem 4rem; color: var(--ink); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header h1 { margin: 0 0 .25rem; font-size: 1.6rem; }
.subtitle { margin: 0; color: var(--muted); }
nav { margin: 1.25rem 0; padding: .75rem 1.25rem; border: 1px solid var(--line); border-radius: 6px;
  background: #f7f9fb; }
nav h2 { margin: 0 0 .25rem; font-size: 1rem; }
nav ol { margin: 0; padding-left: 1.4rem; columns: 2; }
a { color: var(--accent); }
section { margin-top: 2rem; padding-top: .5rem; border-top: 1px solid var(--line); }
section h2 { font-size: 1.3rem; margin: .25rem 0 .75rem; }
h3 { font-size: 1.05rem; margin: 1rem 0 .25rem; }
figure { margin: .75rem 0; }
figure.plot img { max-width: 100%; height: auto; display: block; }
figcaption, caption, .gallery > p { color: var(--muted); font-size: .9rem; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f2f2f2; padding: 0 .2em; }
.table { display: inline-block; vertical-align: top; max-width: 100%; overflow-x: auto;
  margin: .75rem 1.5rem .75rem 0; }
table { border-collapse: collapse; font-size: .9rem; }
caption { caption-side: bottom; text-align: left; padding-top: .3rem; }
th, td { padding: .2rem .6rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: .75rem; }
figure.thumb { margin: 0; width: 136px; }
figure.thumb img { width: 128px; height: 128px; object-fit: contain; background: #eee; display: block; }
figure.thumb img.small { image-rendering: pixelated; }
figure.thumb figcaption { font-size: .8rem; overflow-wrap: anywhere; }
@media print { nav { display: none; } section { break-inside: avoid-page; } }
"""
