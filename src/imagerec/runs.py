"""The run directory: its layout, atomic writes, and loading a finished or interrupted run."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imagerec.errors import UserError
from imagerec.records import ModelInfo, Resolved, parse_model_info
from imagerec.safe_read import is_file, load_yaml

_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR)  # the place, not the program
_FULL = (errno.ENOSPC, errno.EDQUOT)
_TEMPORARY = re.compile(r"^\.(.+)\.(\d+)\.tmp$")  # atomic_write's `.<name>.<pid>.tmp`


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through `write(tmp)` to a temporary sibling, then rename over `path`.

    A crash or a full disk leaves the previous file intact; only the rename makes the new one visible.
    """
    make_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):  # on a read-only disk the cleanup fails too; the first error is the news
            tmp.unlink(missing_ok=True)
        full = f"while saving; the previous {path.name} is intact. Free some space, then continue with --resume"
        raise write_error(path, error, if_full=full) from None


def write_error(place: Path, error: OSError, *, if_full: str) -> Exception:
    """What to raise for `error`, met writing to `place`: when the place is at fault (full, read-only, no
    permission, a file in the way) the one line saying so, `if_full` telling what became of the work on a full
    disk; any other error as it is (a bug, not the user's)."""
    if error.errno in _FULL:
        return UserError(f"{place}: out of disk space {if_full}")
    if error.errno in _UNWRITABLE:
        return UserError(f"{place}: cannot write here ({error.strerror}); choose another output")
    return error


def make_folder(folder: Path) -> None:
    """Create `folder` and its parents; a UserError saying why when that is impossible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a folder should be, no permission, a read-only disk
        why = "a file is in the way" if isinstance(error, FileExistsError | NotADirectoryError) else error.strerror
        raise UserError(f"{folder}: cannot create this folder ({why}); choose another output") from None


def temporary_folder(folder: Path, *, prefix: str) -> tempfile.TemporaryDirectory:
    """A temporary folder inside `folder` (so its files can be renamed into place); a UserError when `folder`
    cannot be written (no permission, a read-only disk)."""
    make_folder(folder)
    try:
        return tempfile.TemporaryDirectory(dir=folder, prefix=prefix)
    except OSError as error:
        raise write_error(folder, error, if_full="while creating it") from None


def check_out(out: Path, data: Path) -> None:
    """Refuse an OUT that holds files, or lies inside the data folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; give a new folder or remove this one")
    if data.is_dir() and out.resolve().is_relative_to(data.resolve()):
        raise UserError(f"{out}: is inside the data folder {data}; give a folder outside it")


@contextmanager
def staged_output(out: Path, what: str) -> Iterator[Path]:
    """A hidden sibling folder to write into, renamed to `out` only when the block completes, so an interrupted
    run never leaves a half-written OUT behind. `out` must be absent or empty (see `check_out`); a place that
    cannot be written (no permission, a read-only disk) or a full disk is a UserError."""
    make_folder(out.parent)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise write_error(out, error, if_full=f"while writing {what}; nothing was written") from None
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


@dataclass(frozen=True)
class RunDir:
    """Paths of one run's files (see docs/classification.md for what each holds)."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "run.yaml"

    @property
    def model_info(self) -> Path:
        return self.path / "model.json"

    @property
    def best(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def last(self) -> Path:
        return self.path / "last.safetensors"

    @property
    def state(self) -> Path:
        return self.path / "state.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def lock(self) -> Path:
        return self.path / "run.lock"

    def evaluation(self, split: str) -> Path:
        return self.path / "evaluation" / f"{split}.json"

    def read_model_info(self) -> ModelInfo:
        """model.json as the typed record (older record versions upgraded)."""
        return parse_model_info(_read_json(self.model_info), run=self.path)

    def write_model_info(self, info: ModelInfo) -> None:
        write_json(self.model_info, info.to_json())

    def read_config(self) -> dict[str, Any]:
        if not is_file(self.config):
            raise UserError(f"{self.path}: no run.yaml; not an imagerec run directory")
        return load_yaml(self.config) or {}  # a run folder may come from elsewhere: read as any untrusted YAML

    def read_resolved(self) -> Resolved:
        """run.yaml's `resolved` part: versions, data fingerprint, numerics, weights loaded."""
        return Resolved.model_validate(self.read_config().get("resolved") or {})

    def read_split(self) -> dict[str, list[str]] | None:
        return _read_json(self.split) if self.split.exists() else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing; is {path.parent} an imagerec run directory?") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: damaged JSON ({error}); re-run training or restore the file") from None


def new_run_dir(out: Path | None, task: str, root: Path = Path("runs")) -> RunDir:
    """`out` if it holds no run (see `refuse_existing`), else the next free `runs/<task>-NNN`, created at once so that
    two trainings started together cannot pick the same one."""
    if out is not None:
        run = RunDir(Path(out))
        refuse_existing(run)
        return run
    make_folder(root)
    n = 1
    while True:
        try:
            (root / f"{task}-{n:03d}").mkdir()
            return RunDir(root / f"{task}-{n:03d}")
        except FileExistsError:
            n += 1
        except OSError as error:
            raise write_error(root, error, if_full="while creating it") from None


def refuse_existing(run: RunDir) -> None:
    """A UserError when `run.path` already holds a run, finished or not: a new one would overwrite its files."""
    found = [p.name for p in (run.model_info, run.state, run.metrics, run.best, run.last) if p.exists()]
    if found:
        raise UserError(
            f"{run.path}: already holds a run ({', '.join(found)}); continue it with --resume {run.path} "
            "or choose another --out"
        )


@contextlib.contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """Hold `run.lock` (an exclusive flock) while training writes into the run; a UserError when another process
    holds it. The operating system releases the lock when its process ends, however it ends, so a crash or a kill
    never leaves a stale lock behind (the empty file stays)."""
    make_folder(run.path)
    try:
        fd = os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:  # a read-only disk, no permission
        raise write_error(run.lock, error, if_full="while creating it") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{run.path}: another training is running in this folder (it holds {run.lock.name}); wait for it "
                "to end, or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of killed writes (`.<name>.<pid>.tmp` of a process that is gone, or of this one:
    call it before writing) in `folder` and below; returns them."""
    removed = []
    for path in folder.rglob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match is None or (int(match[2]) != os.getpid() and _alive(int(match[2]))):
            continue
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile by whoever else cleans up
            path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def open_run(path: Path | str) -> RunDir:
    """A run directory that exists, with a model record this version reads (format, task, fields)."""
    run = RunDir(Path(path).expanduser())
    if not run.path.is_dir():
        raise UserError(f"{run.path}: no such run directory; give the folder `imagerec train` wrote")
    run.read_model_info()  # the record must parse: say so now rather than halfway through a command
    return run


@dataclass
class Run:
    """A finished training run: where it lives and what it measured."""

    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)  # on the test split when there is one, else val
    best_epoch: int = 0
    epochs: int = 0
    split: str = ""  # which split `metrics` were measured on
    primary: bool = True  # False in the other processes of a multi-process run, which should stay quiet
