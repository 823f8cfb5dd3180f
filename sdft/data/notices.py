"""Warnings about files, told once per kind: a folder of 500 copies of one photo, or of 300 photos below the
resolution, gives one line with the count and the first few names, not one line per file."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: how many names a grouped warning shows before "..."
NAMES_SHOWN = 5


class FileWarning(UserWarning):
    """A warning about one file, told with the others of its kind by :func:`grouped_file_warnings`.

    Args:
        message: the warning on its own, naming the file.
        kind: what the files of its kind share, read after their count (``files in photos/ are not images``).
        name: the file as the grouped line names it.
        advice: what to do, after the names (may be empty).
    """

    def __init__(self, message: str, kind: str, name: str, advice: str = "") -> None:
        super().__init__(message)
        self.kind, self.name, self.advice = kind, name, advice


def shown_names(names: list[str]) -> str:
    """The first :data:`NAMES_SHOWN` names, then ``...`` when there are more."""
    return ", ".join(names[:NAMES_SHOWN]) + (", ..." if len(names) > NAMES_SHOWN else "")


def group_line(kind: str, names: list[str], advice: str = "") -> str:
    """One line for ``len(names)`` files of one kind: ``499 files repeat a.png: b.png, c.png, ...; advice``."""
    return f"{len(names)} {kind}: {shown_names(names)}" + (f"; {advice}" if advice else "")


@contextmanager
def grouped_file_warnings() -> Iterator[None]:
    """Collect the :class:`FileWarning` raised inside and warn once per kind on leaving: a kind of one file keeps
    its own message, several are told as :func:`group_line`. Other warnings pass through unchanged."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FileWarning)
        yield
    groups: dict[tuple[str, str], list[FileWarning]] = {}
    for record in caught:
        if isinstance(record.message, FileWarning):
            groups.setdefault((record.message.kind, record.message.advice), []).append(record.message)
        else:
            warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
    for (kind, advice), found in groups.items():
        text = str(found[0]) if len(found) == 1 else group_line(kind, [item.name for item in found], advice)
        warnings.warn(text, UserWarning, stacklevel=3)
