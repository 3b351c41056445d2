"""What a prediction request may carry, read within limits: the body, its images and its options.

Only uploaded bytes become images; no field is ever read as a path on the server.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from imagerec.errors import UserError

FILE_FIELDS = ("file", "files")
# What a request may set per call: PredictOptions' fields, except `max_pixels`, which is the server's limit.
OPTION_TYPES: dict[str, type] = {
    "topk": int, "conf": float, "iou": float, "agnostic": bool, "max_det": int, "tile": int, "overlap": int,
}  # fmt: skip
FLAGS = ("overlay",)  # about the response, not the prediction
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class RequestError(Exception):
    """A request the server refuses: answered with `status` and `{"error": message}`; `kind` labels the metric."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass(frozen=True)
class Limits:
    """What one request may hold: `max_bytes` of body, `max_files` images, `max_pixels` pixels per image."""

    max_bytes: int = 32 * 2**20
    max_pixels: int = 40_000_000  # a 7,700 × 5,200 photo; Pillow's own bomb limit is about 89 million
    max_files: int = 16

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_files) < 1:
            raise UserError("--max-bytes, --max-pixels and --max-files must be at least 1")


async def read_body(headers: Mapping[str, str], stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit` (by its declared length or as it comes)."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_big(limit)
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _too_big(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_big(limit: int) -> RequestError:
    return RequestError(413, f"request body over the server's limit of {limit} bytes (--max-bytes)", "too_many_bytes")


async def parse_body(headers: Mapping[str, str], body: bytes, limits: Limits) -> tuple[list[tuple[str, bytes]], dict]:
    """(name, bytes) of each image and the form's other fields: multipart files under `file`/`files`, or the raw
    body as one image."""
    content_type = headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        if not body:
            raise RequestError(400, "no image: send image bytes as the body or as multipart field 'file'", "no_image")
        return [("<image 0>", body)], {}
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def once() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(headers, once(), max_files=limits.max_files, max_fields=64)  # type: ignore[arg-type]
    try:
        form = await parser.parse()
    except MultiPartException as error:
        too_many = "Too many files" in str(error)
        kind, status = ("too_many_files", 413) if too_many else ("bad_form", 400)
        message = f"more than {limits.max_files} files (--max-files)" if too_many else f"bad multipart body: {error}"
        raise RequestError(status, message, kind) from None
    return await _split_form(form)


async def _split_form(form: Any) -> tuple[list[tuple[str, bytes]], dict]:
    images, fields = [], {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields[key] = value
        elif key not in FILE_FIELDS:
            raise RequestError(400, f"file in field {key!r}: send images as 'file' or 'files'", "bad_form")
        else:
            images.append((_display_name(value.filename, len(images)), await value.read()))
            await value.close()
    if not images:
        raise RequestError(400, "no image: add one or more files under the multipart field 'file'", "no_image")
    return images, fields


def _display_name(filename: str | None, position: int) -> str:
    """The client's file name, without any folder it named (it is a label, never a path on the server)."""
    name = PurePath((filename or "").replace("\\", "/")).name
    return name[:200] if name else f"<image {position}>"


def decode(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The image in `data`, its size checked from the header before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies instead
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise _too_many_pixels(name, None, max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise RequestError(400, f"{name}: not an image Pillow can read", "not_an_image") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(name, (width, height), max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = ImageOps.exif_transpose(image)  # as predict reads files
            image.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise RequestError(400, f"{name}: truncated or damaged image ({error})", "bad_image") from None
    return image


def _too_many_pixels(name: str, size: tuple[int, int] | None, limit: int) -> RequestError:
    what = f"{size[0]}×{size[1]} pixels" if size else "too many pixels"
    return RequestError(413, f"{name}: {what}, over the server's limit of {limit} (--max-pixels)", "too_many_pixels")


def parse_options(values: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, bool]]:
    """Prediction options and response flags from query or form strings; unknown names are refused."""
    options: dict[str, Any] = {}
    flags = dict.fromkeys(FLAGS, False)
    for key, text in values.items():
        if key in FLAGS:
            flags[key] = _boolean(key, text)
        elif key in OPTION_TYPES:
            options[key] = _convert(key, text, OPTION_TYPES[key])
        else:
            known = ", ".join([*OPTION_TYPES, *FLAGS])
            raise RequestError(422, f"unknown option {key!r}: use {known}", "bad_option")
    return options, flags


def _convert(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        return _boolean(key, text)
    try:
        return kind(text)
    except ValueError:
        raise RequestError(422, f"{key}={text!r}: expected {kind.__name__}", "bad_option") from None


def _boolean(key: str, text: str) -> bool:
    if text.lower() in TRUE or text.lower() in FALSE:
        return text.lower() in TRUE
    raise RequestError(422, f"{key}={text!r}: expected true or false", "bad_option")
