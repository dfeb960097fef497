"""Atomic file and folder writes, the one implementation the library and the stages use.

Every file is written to a temporary sibling and moved into place with ``os.replace``; whole
output folders are built in a temporary sibling folder and swapped in, so an interrupted run
never leaves a half-written file or folder behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

PathLike = str | os.PathLike


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def json_error(path: PathLike, data: bytes) -> tuple[str, int] | None:
    """(problem, line) of JSON file bytes that are not UTF-8 JSON, None when they are. The
    problem names the offending byte or JSON's complaint, with its column."""
    try:
        json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return (f"byte 0x{data[exc.start:exc.start + 1].hex()} at column {col} is not UTF-8 "
                f"({exc.reason})", line)
    except json.JSONDecodeError as exc:
        return f"{exc.msg} at column {exc.colno}", exc.lineno
    return None


def read_json(path: PathLike, what: str = "a JSON file"):
    """The parsed JSON of ``path``; ValueError naming the file, the line, the problem and the
    rule (``<what> is UTF-8 JSON``) when it is not UTF-8 JSON."""
    data = Path(path).read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        problem, line = json_error(path, data)
        raise ValueError(f"{str(path)!r} (line {line}): {problem}; rule: {what} is UTF-8 "
                         f"JSON") from None


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(final: PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it in for ``final`` on success.

    On any exception the temporary folder is deleted and ``final`` is left untouched. On success
    an existing ``final`` is replaced as a whole (its old content does not survive).
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700 folders
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, final)


def replace_directory(src: PathLike, final: PathLike) -> None:
    """Move folder ``src`` to ``final``, replacing whatever is there, with a short swap window."""
    src, final = Path(src), Path(final)
    old = None
    if final.exists() or final.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.rmdir(old)
        os.replace(final, old)
    try:
        os.replace(src, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def clean_stale_temporaries(parent: PathLike, name: str) -> None:
    """Remove leftovers ``.<name>.tmp-*`` / ``.<name>.old-*`` of a killed earlier run."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for p in parent.glob(f".{name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in parent.glob(f".{name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def atomic_torch_save(obj, path: PathLike) -> None:
    """torch.save that never leaves a truncated file behind (written aside, then swapped in)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
