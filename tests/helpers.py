"""Helpers shared by the CLI tests: invoke the Typer app, and check the one-line user error contract."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from imagerec.cli.main import app, main


def invoke(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def user_error(capsys, monkeypatch, *args: object) -> str:
    """Run `imagerec ARGS` in-process through the real entry point; assert exit 2 with one `error:` line."""
    monkeypatch.setattr(sys, "argv", ["imagerec", *map(str, args)])
    with pytest.raises(SystemExit) as caught:
        main()
    captured = capsys.readouterr()
    assert caught.value.code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@contextmanager
def tmpfs(folder: Path, size: str = "64m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at the new folder `folder` for the test, unmounted after; skips the test where
    mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextmanager
def read_only_copy(folder: Path, copies: dict[str, Path]) -> Iterator[Path]:
    """`folder` holding `copies` (name → source folder) and an empty `empty/`, then made read-only: a tmpfs
    remounted read-only (errno 30) where mounting is permitted, else a folder without write permission for a user
    who is not root (errno 13)."""
    if os.geteuid() == 0:  # root writes through permissions: only a read-only file system stops it
        with tmpfs(folder, "256m"):
            _fill_with(folder, copies)
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
            yield folder
        return
    folder.mkdir()
    _fill_with(folder, copies)
    folders = [path for path in folder.rglob("*") if path.is_dir()] + [folder]
    for path in folders:
        path.chmod(0o555)
    try:
        yield folder
    finally:
        for path in folders:
            path.chmod(0o755)


def _fill_with(folder: Path, copies: dict[str, Path]) -> None:
    for name, source in copies.items():
        shutil.copytree(source, folder / name)
    (folder / "empty").mkdir()


def claimed_size_png(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose header claims `width`×`height` pixels: a decompression bomb's calling card."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path
