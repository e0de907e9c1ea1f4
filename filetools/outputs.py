"""Where a command writes its result: checked before any work, named in every error.

Tools write to a hidden temporary file beside the output and rename it into place (a server
never sees half a file); errors must still name the output the user gave, not that file.
Standard library only, so the `jpip` client can use it without the tools' dependencies.
"""
from __future__ import annotations

import os
from pathlib import Path


class OutputError(ValueError):
    """The output cannot be written; the message names it and says why."""


def output_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot be written (its folder is missing or read-only...), or None."""
    p = Path(path)
    folder = p.parent
    if p.is_dir():
        return f"{str(p)!r} is a folder: give a file name"
    if not folder.exists():
        return f"the folder {str(folder)!r} does not exist"
    if not folder.is_dir():
        return f"{str(folder)!r} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {str(folder)!r} is not writable"
    if p.exists() and not os.access(p, os.W_OK):
        return f"{str(p)!r} exists and is not writable"
    return None


def check_output(path: str | os.PathLike[str]) -> None:
    """Raises OutputError when `path` cannot be written."""
    if problem := output_problem(path):
        raise OutputError(f"cannot write {os.fspath(path)}: {problem}")


def write_error(path: str | os.PathLike[str], exc: OSError) -> OutputError:
    """An OSError met while writing (e.g. the disk is full), told about the real output."""
    return OutputError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}")
