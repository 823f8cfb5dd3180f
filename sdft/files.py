"""Atomic writes of files and folders: a file or folder that exists is always complete.

The temporary file or folder is created as ``open`` or ``mkdir`` would create the final one (mode 0o666 or 0o777
less the umask, or the folder's default ACL), and the files a writer made inside it are given that mode, so a run's
exports and the built-in assets are as readable as any other file the user makes, not private like ``tempfile``'s
0o600 files and 0o700 folders or safetensors' 0o600 files.

A write the filesystem refuses (no space left, over quota, read-only, no permission, a file where a folder of the path
should be) is a :class:`WriteError`: one line naming the file or folder, the reason and the fix, what was there kept.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from sdft.errors import UserError

T = TypeVar("T")

#: what to do when the filesystem refuses a write, by its error number
WRITE_FIXES = {
    errno.ENOSPC: "free disk space and run it again",
    errno.EDQUOT: "free space within your disk quota and run it again",
    errno.EFBIG: "the file is larger than this filesystem allows: write to another disk",
    errno.EROFS: "the filesystem is read-only: write to another folder",
    errno.EACCES: "write to a folder you may write to, or change its permissions",
    errno.EPERM: "write to a folder you may write to, or change its permissions",
    errno.ENOTDIR: "a file stands where a folder of the path should be: move it or write elsewhere",
    errno.EEXIST: "a file stands where a folder of the path should be: move it or write elsewhere",
}


class WriteError(UserError):
    """A write the filesystem refused, told in one line naming the file; :attr:`errno` is the system's number."""

    def __init__(self, message: str, number: int) -> None:
        super().__init__(message)
        self.errno = number


def error_number(error: BaseException) -> int | None:
    """The system error number behind ``error``: an ``OSError``'s, or the ``os error N`` that safetensors' writer
    quotes in its own error."""
    if isinstance(error, (OSError, WriteError)):
        return error.errno
    found = re.search(r"os error (\d+)", str(error))
    return int(found.group(1)) if found else None


@contextmanager
def write_failures_named(path: Path) -> Iterator[None]:
    """Turn the filesystem refusing a write inside into a :class:`WriteError` naming ``path`` (the final file or
    folder, not a hidden staging one); other errors pass through.

    Args:
        path: the file or folder being written.
    """
    try:
        yield
    except Exception as error:
        number = error_number(error)
        if number not in WRITE_FIXES:
            raise
        kept = "what was there is kept" if path.exists() else "nothing was written"
        raise WriteError(
            f"cannot write {path} ({os.strerror(number)}): {WRITE_FIXES[number]}; {kept}", number
        ) from error


def make_folder(folder: Path) -> Path:
    """Create ``folder`` and its parents if missing (a :class:`WriteError` naming it if the filesystem refuses);
    return it."""
    with write_failures_named(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file through ``write(binary_file)`` into a hidden temporary sibling, then rename it over ``path``.

    Args:
        path: the final file; its folder is created if missing.
        write: writes the contents to an open binary file (e.g. ``figure.savefig`` or ``image.save``).
    """
    with write_failures_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = staging_path(path, suffix=".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        handle = os.open(temporary, flags, 0o666)  # the mode open(path, "w") gives: 0o666 less the umask
        try:
            with os.fdopen(handle, "wb") as file:
                write(file)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def write_named_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Have ``write(staging_file)`` write a whole file by name (as safetensors' ``save_file`` does, streaming it)
    into a hidden temporary sibling, then rename it over ``path``; return ``path``.

    Args:
        path: the final file; its folder is created if missing.
        write: writes the whole file at the path it is given.
    """
    with write_failures_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = staging_path(path, suffix=".tmp")
        try:
            write(temporary)
            follow_umask(temporary)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return path


def follow_umask(file: Path) -> None:
    """Give a file the mode ``open(path, "w")`` would have given it (0o666 less the umask): writers such as
    safetensors' ``save_file`` create theirs private (0o600), which would keep other users from a shared export."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(file, 0o666 & ~umask)


def staging_path(path: Path, suffix: str = "") -> Path:
    """A fresh hidden sibling of ``path`` to build it in (``.name.<host>-<pid>-<random>``), not yet created; the
    staging that a killed writer on this host left of ``path`` is removed first (see :func:`sweep_staging`).

    Args:
        path: the final file or folder.
        suffix: appended to the name (e.g. ``.tmp``).
    """
    sweep_staging(path.parent.resolve())
    return path.with_name(f".{path.name}.{HOST}-{os.getpid()}-{secrets.token_hex(8)}{suffix}")


#: the host part of staging names: staging of other hosts sharing the folder is never swept from here
HOST = re.sub(r"[^A-Za-z0-9]+", "_", socket.gethostname()) or "host"


#: a staging name of this host (see :func:`staging_path`), with its process id
STAGING = re.compile(rf"\..+\.{re.escape(HOST)}-(\d+)-[0-9a-f]{{16}}(\.tmp)?")


@functools.cache
def sweep_staging(folder: Path) -> None:
    """Remove the hidden staging that writers on this host left in ``folder`` when they were killed mid-write (their
    process is gone); writers still running, and other hosts', keep theirs. Once per folder and process: staging
    left behind is a past process's, and a folder of many files is not listed again at every write.

    Args:
        folder: the folder written into (resolved).
    """
    try:
        siblings = list(folder.iterdir())
    except OSError:
        return
    for sibling in siblings:
        found = STAGING.fullmatch(sibling.name)
        if found and not process_alive(int(found.group(1))):
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether a process of this host has the id ``pid``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write one JSON document atomically."""
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_folder_atomic(folder: Path, build: Callable[[Path], T], replace: bool = True) -> T:
    """Build a folder through ``build(staging)`` in a hidden sibling, then rename it into place; return what
    ``build`` returns.

    Args:
        folder: the final folder; its parent is created if missing.
        build: fills the (empty) staging folder it is given.
        replace: replace an existing ``folder`` (it is moved aside and deleted only once the new one is in place);
            when False an existing folder is kept and the new build dropped, so concurrent builders of one folder
            (several ranks on a node) race harmlessly.
    """
    with write_failures_named(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        previous = folder.with_name(f".{folder.name}-previous")
        recover_previous(folder, previous)
        staging = staging_path(folder)
        staging.mkdir()  # the mode mkdir gives (0o777 less the umask), unlike tempfile.mkdtemp's private 0o700
        try:
            result = build(staging)
            for file in staging.rglob("*"):
                if file.is_file() and not file.is_symlink():
                    follow_umask(file)
            if replace and folder.exists():
                os.replace(folder, previous)
            try:
                os.replace(staging, folder)
            except OSError:
                if replace or not folder.is_dir():
                    raise
        except BaseException:
            recover_previous(folder, previous)  # an old folder moved aside goes back
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(previous, ignore_errors=True)
    return result


def recover_previous(folder: Path, previous: Path) -> None:
    """Finish a replacement that a killed process left half done: the old folder moved aside to ``previous`` and
    the new one not yet in place puts the old one back (it was complete); both present drops the old one."""
    if not previous.is_dir():
        return
    if folder.exists():
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(previous, folder)
