"""Helpers shared by the CLI tests: invoke the Typer app, and check the one-line user error contract."""

from __future__ import annotations

import sys

import pytest
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
