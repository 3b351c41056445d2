"""Rendering report sections into one self-contained report.html: every image embedded once as a base64 data URI
(figures as PNG, also written beside it as PNG files; gallery images as PNG or JPEG, whichever is smaller), inline
CSS, no fonts or network requests, and one small inline script (sorting tables) that the page's content security
policy admits by its hash and refuses anything else. Every image opens full size on a click, with CSS alone (a
`:target` lightbox)."""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imagerec.outputs.report.blocks import Block, Figure, Gallery, Notes, Panels, ReportContext, Section, Table, cell
from imagerec.outputs.visualize import shortened
from imagerec.runs import atomic_write, write_text
from imagerec.safe_read import printable

DPI = 100
SHEET_CELL = 160  # pixels per image in the PNG contact sheet written for each gallery
SHEET_COLUMNS = 6
CAPTION_HEIGHT = 20


JPEG_QUALITY = 90  # drawn labels and box lines stay crisp; a photo takes a fifth of its PNG bytes


@dataclass(frozen=True)
class Picture:
    """One image: the file it is written to beside report.html, its bytes (`kind`: png or jpeg) and its size in
    pixels."""

    name: str
    data: bytes
    width: int
    height: int
    kind: str = "png"

    @property
    def uri(self) -> str:
        return f"data:image/{self.kind};base64," + base64.b64encode(self.data).decode("ascii")


@dataclass
class Pictures:
    """The PNGs of a report: one per Figure (a Panels' figures included) and one contact sheet per Gallery (written
    as files), and each gallery image (embedded only), keyed by the block's id()."""

    files: dict[int, Picture]
    thumbnails: dict[int, list[Picture]]


def render(ctx: ReportContext, sections: list[Section]) -> Path:
    """Write report.html, its PNGs, the CSV of each table that names one and the Markdown of each section that
    names one into `ctx.out`; returns the path of report.html."""
    from imagerec.outputs.report.markdown import section_markdown

    pictures = rasterize(sections)
    text = document(ctx, sections, pictures)
    for picture in pictures.files.values():
        atomic_write(ctx.out / picture.name, lambda tmp, data=picture.data: tmp.write_bytes(data))
    for section in sections:
        if section.file:
            write_text(ctx.out / section.file, section_markdown(section))
        for block in section.blocks:
            if isinstance(block, Table) and block.file:
                write_text(ctx.out / block.file, table_csv(block))
    path = ctx.out / "report.html"
    write_text(path, text)
    return path


def rasterize(sections: list[Section]) -> Pictures:
    """Draw every figure and gallery to PNG (the slow part of rendering)."""
    pictures = Pictures({}, {})
    names: set[str] = set()
    for section in sections:
        for n, block in enumerate(section.blocks):
            drawn: list[tuple[Any, Picture]] = []
            if isinstance(block, Figure):
                drawn.append((block, figure_png(block)))
            elif isinstance(block, Panels):
                drawn += [(figure, figure_png(figure)) for figure in block.figures]
            elif isinstance(block, Gallery):
                drawn.append((block, sheet_png(block, f"{section.id}_{_slug(block.title) or n}.png")))
                pictures.thumbnails[id(block)] = [smallest(image) for image, _ in block.images]
            for owner, picture in drawn:
                if picture.name in names:
                    raise ValueError(f"two report images are both named {picture.name!r}")
                names.add(picture.name)
                pictures.files[id(owner)] = picture
    return pictures


def table_csv(table: Table) -> str:
    """Every row of `table` as CSV under its column names: numbers unrounded, a missing value empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows([["" if _missing(v) else v for v in row] for row in table.rows])
    return buffer.getvalue()


def _missing(value: Any) -> bool:
    return value is None or value == "—" or (isinstance(value, float | np.floating) and value != value)


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


def smallest(image: np.ndarray) -> Picture:
    """A gallery image as PNG or JPEG, whichever takes fewer bytes: photos (raccoons at 512–800 px drawn) shrink
    about 5× as JPEG, while enlarged digit scans and flat drawings stay PNG, sharp and smaller still."""
    lossless = png(image, "")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    if len(buffer.getvalue()) >= len(lossless.data):
        return lossless
    return Picture("", buffer.getvalue(), lossless.width, lossless.height, kind="jpeg")


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
        text = shortened(draw, caption, font, SHEET_CELL - 6)
        draw.text((x + SHEET_CELL // 2, y + SHEET_CELL + 2), text, fill="black", font=font, anchor="ma")
    return png(np.asarray(sheet), name)


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
    ids = itertools.count(1)
    body = "\n".join(_section(s, pictures, ids) for s in sections)
    sorting = any(isinstance(b, Table) and b.sortable for s in sections for b in s.blocks)
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    script = ""
    if sorting:  # the one script the page runs, admitted by its hash: the policy still refuses any other
        policy += f"; script-src '{script_hash(SORT_SCRIPT)}'"
        script = f"<script>{SORT_SCRIPT}</script>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
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
{script}
</body>
</html>
"""


def script_hash(script: str) -> str:
    """The content-security-policy source that admits an inline script of exactly this text."""
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def _section(section: Section, pictures: Pictures, ids: Iterator[int]) -> str:
    blocks = "\n".join(_block(b, pictures, ids) for b in section.blocks)
    return f'<section id="{_e(section.id)}">\n<h2>{_e(section.title)}</h2>\n{blocks}\n</section>'


def _block(block: Block, pictures: Pictures, ids: Iterator[int]) -> str:
    if isinstance(block, Figure):
        caption = f"<figcaption>{_prose(block.caption)}</figcaption>" if block.caption else ""
        return _zoomable(pictures.files[id(block)], block.caption or block.name, next(ids), "plot", caption)
    if isinstance(block, Panels):
        panels = "".join(
            _zoomable(pictures.files[id(f)], f.caption or f.name, next(ids), "plot", "") for f in block.figures
        )
        caption = f"<figcaption>{_prose(block.caption)}</figcaption>" if block.caption else ""
        return f'<figure class="panels"><div class="row">{panels}</div>{caption}</figure>'
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Gallery):
        return _gallery(block, pictures, ids)
    if isinstance(block, Notes):
        items = "".join(f"<li>{_prose(item)}</li>" for item in block.items)
        return f"<h3>{_e(block.title)}</h3><ul>{items}</ul>"
    return f"<p>{_prose(block.text)}</p>"


def _zoomable(picture: Picture, alt: str, n: int, kind: str, caption: str, shown: tuple[int, int] | None = None) -> str:
    """An image that opens full size: its link targets the figure, which CSS then lays over the whole window, with
    a link back to where it was. Shown at `shown` (width, height) CSS pixels, else its own size."""
    width, height = shown or (picture.width, picture.height)
    pixels = " pixels" if width >= 2 * picture.width else ""  # enlarged: square pixels, no invented detail
    size = f' style="width:{width}px"' if shown else ""
    file = f' data-file="{_e(picture.name)}"' if picture.name else ""
    return (
        f'<figure class="{kind} zoom{pixels}" id="image-{n}"{size}><a class="open" id="see-{n}" href="#image-{n}" '
        f'title="Open full size"><img src="{picture.uri}" width="{width}" height="{height}" alt="{_e(alt)}"{file}>'
        f'</a>{caption}<a class="close" href="#see-{n}">close ×</a></figure>'
    )


def _table(table: Table) -> str:
    shown = table.rows if table.shown is None else table.rows[: table.shown]
    if any(table.columns):
        labels = [_e(str(c)) for c in table.columns]
        heads = [f'<button type="button">{label}</button>' for label in labels] if table.sortable else labels
        head = "<thead><tr>" + "".join(f'<th scope="col">{h}</th>' for h in heads) + "</tr></thead>"
    else:
        head = ""
    rows = "".join(f"<tr>{''.join(_cell_html(v) for v in row)}</tr>" for row in shown)
    caption = _prose(table.caption)
    if len(shown) < len(table.rows):
        caption += f" The first {len(shown)} of {len(table.rows)} rows; all are in <code>{_e(table.file or '')}</code>."
    elif table.file:
        caption += f" Also in <code>{_e(table.file)}</code>, beside this page."
    sortable = ' class="sortable"' if table.sortable else ""
    caption = f"<figcaption>{caption.strip()}</figcaption>" if caption else ""
    # The caption sits outside the scrolling box, so that it wraps at the window's edge when a wide table scrolls.
    return (
        f'<figure class="table"><div class="scroll"><table{sortable}>{head}<tbody>{rows}</tbody></table></div>'
        f"{caption}</figure>"
    )


def _cell_html(value: Any) -> str:
    """A cell; a number carries its value unrounded, for sorting."""
    if not _numeric(value):
        return f"<td>{_e(cell(value))}</td>"
    number = "" if _missing(value) else f' data-v="{float(value)!r}"'
    return f'<td class="num"{number}>{_e(cell(value))}</td>'


def _numeric(value: Any) -> bool:
    """Whether a cell is right-aligned: numbers, and the dash standing for a missing one."""
    if value is None or value == "—":
        return True
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _gallery(gallery: Gallery, pictures: Pictures, ids: Iterator[int]) -> str:
    sheet = pictures.files[id(gallery)]
    items = []
    for picture, (_, caption) in zip(pictures.thumbnails[id(gallery)], gallery.images, strict=True):
        scale = gallery.side / max(picture.width, picture.height)
        shown = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        text = f"<figcaption>{_e(caption)}</figcaption>"
        items.append(_zoomable(picture, caption, next(ids), "thumb", text, shown))
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


# Sorts a table.sortable by the column whose header button is clicked (numbers by their data-v, missing ones
# last), ascending then descending; without scripts the table keeps the order it was written in (worst first).
SORT_SCRIPT = """
for (const table of document.querySelectorAll("table.sortable")) {
  const heads = Array.from(table.tHead.rows[0].cells);
  heads.forEach((head, column) => head.querySelector("button").addEventListener("click", () => {
    const up = head.getAttribute("aria-sort") !== "ascending";
    const key = (row) => {
      const cell = row.cells[column], text = cell.textContent;
      return "v" in cell.dataset ? [0, Number(cell.dataset.v), ""] : [text === "\u2014" ? 2 : 1, 0, text];
    };
    const rows = Array.from(table.tBodies[0].rows).sort((a, b) => {
      const [x, y] = [key(a), key(b)];
      if (x[0] !== y[0]) return x[0] - y[0];
      const order = x[1] - y[1] || x[2].localeCompare(y[2], undefined, {numeric: true});
      return up ? order : -order;
    });
    heads.forEach((other) => other.removeAttribute("aria-sort"));
    head.setAttribute("aria-sort", up ? "ascending" : "descending");
    table.tBodies[0].append(...rows);
  }));
}
"""

CSS = """
:root { color-scheme: light; --ink: #1b1b1b; --muted: #5b5b5b; --line: #d9d9d9; --accent: #0072B2; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1180px; padding: 1.5rem 2rem 4rem; color: var(--ink); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header h1 { margin: 0 0 .25rem; font-size: 1.6rem; overflow-wrap: anywhere; }
.subtitle { margin: 0; color: var(--muted); overflow-wrap: anywhere; }
nav { margin: 1.25rem 0; padding: .75rem 1.25rem; border: 1px solid var(--line); border-radius: 6px;
  background: #f7f9fb; }
nav h2 { margin: 0 0 .25rem; font-size: 1rem; }
nav ol { margin: 0; padding-left: 1.4rem; columns: 2; }
a { color: var(--accent); }
section { margin-top: 2rem; padding-top: .5rem; border-top: 1px solid var(--line); }
section h2 { font-size: 1.3rem; margin: .25rem 0 .75rem; }
h3 { font-size: 1.05rem; margin: 1rem 0 .25rem; }
p, li { overflow-wrap: anywhere; }
figure { margin: .75rem 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption, .gallery > p { color: var(--muted); font-size: .9rem; overflow-wrap: anywhere; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f2f2f2; padding: 0 .2em; }
.panels .row { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: flex-start; }
.panels .row figure { margin: 0; min-width: 0; }
figure.table { display: inline-block; vertical-align: top; max-width: 100%; margin: .75rem 1.5rem .75rem 0; }
figure.table .scroll { overflow-x: auto;
  background: linear-gradient(to right, #fff 30%, rgba(255,255,255,0)) left / 2rem 100% no-repeat local,
    linear-gradient(to left, #fff 30%, rgba(255,255,255,0)) right / 2rem 100% no-repeat local,
    radial-gradient(farthest-side at 0 50%, rgba(0,0,0,.18), transparent) left / .8rem 100% no-repeat scroll,
    radial-gradient(farthest-side at 100% 50%, rgba(0,0,0,.18), transparent) right / .8rem 100% no-repeat scroll; }
figure.table figcaption { width: 0; min-width: 100%; padding-top: .3rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { padding: .2rem .6rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td { overflow-wrap: anywhere; min-width: 4.5em; }
td:first-child { overflow-wrap: break-word; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; overflow-wrap: normal; min-width: 0; }
table.sortable td { overflow-wrap: break-word; min-width: 0; }
table.sortable th { padding: 0; }
table.sortable th button { all: unset; display: block; padding: .2rem 1.2rem .2rem .6rem; cursor: pointer;
  position: relative; }
table.sortable th button::after { content: "\\2195"; position: absolute; right: .3rem; color: var(--muted); }
table.sortable th[aria-sort=ascending] button::after { content: "\\2191"; color: var(--ink); }
table.sortable th[aria-sort=descending] button::after { content: "\\2193"; color: var(--ink); }
table.sortable th button:focus-visible { outline: 2px solid var(--accent); }
.grid { display: flex; flex-wrap: wrap; gap: .75rem; }
figure.thumb { margin: 0; max-width: 100%; }
figure.thumb img { background: #eee; }
figure.pixels img { image-rendering: pixelated; }
figure.thumb figcaption { font-size: .8rem; }
a.open { display: block; cursor: zoom-in; }
a.close { display: none; }
figure.zoom:target { position: fixed; inset: 0; z-index: 10; margin: 0; width: auto !important; max-width: none;
  padding: 2.5rem 2.5vw 1rem; background: rgba(20, 20, 20, .92); display: flex; flex-direction: column;
  align-items: safe center; justify-content: safe center; overflow: auto; }
figure.zoom:target a.open { cursor: default; }
figure.thumb.zoom:target img { width: 95vw; height: 80vh; max-width: none; object-fit: contain;
  image-rendering: pixelated; background: none; }
figure.plot.zoom:target img { max-width: none; background: #fff; }
figure.zoom:target figcaption { color: #eee; max-width: 95vw; margin-top: .5rem; font-size: .9rem; }
figure.zoom:target a.close { display: block; position: fixed; inset: 0; z-index: -1; color: #fff; text-align: right;
  padding: .5rem 1rem; font-size: 1.1rem; text-decoration: none; cursor: zoom-out; }
@media (max-width: 600px) {
  body { padding: 1rem .75rem 3rem; font-size: 14px; }
  header h1 { font-size: 1.3rem; }
  nav { padding: .5rem .75rem; }
  nav ol { columns: 1; }
  figure.table { display: block; margin-right: 0; }
  th, td { padding: .2rem .35rem; }
  table { font-size: .85rem; }
  .grid { gap: .5rem; }
}
@media print { nav, a.close { display: none; } section { break-inside: avoid-page; } }
"""
