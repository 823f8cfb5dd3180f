"""Weights fetched from the Hugging Face hub that cannot be fetched (offline, no network, not in the cache), told in
one line: which weights, why, and how to point at a local copy, instead of a loader's traceback."""

from __future__ import annotations

import functools
import inspect
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sdft.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

#: the errors, by class name, of a download that cannot happen (huggingface_hub, requests, urllib3, urllib)
UNREACHABLE = frozenset(
    {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "ConnectionError",
        "ConnectTimeout",
        "ReadTimeout",
        "MaxRetryError",
        "NameResolutionError",
        "URLError",
    }
)
#: how to give a base model the hub cannot serve
LOCAL_MODEL = "give a local diffusers folder in its place (huggingface-cli download <id> --local-dir <folder>)"
#: a file's address on the hub, as huggingface_hub's errors quote it
HUB_FILE = re.compile(r"huggingface\.co/(?:api/models/)?([\w.-]+/[\w.-]+)/resolve/[^/\s]+/(\S+?)[:\s]")


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or during, innermost last."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` comes from a download that could not happen."""
    return any(type(link).__name__ in UNREACHABLE or "couldn't connect to" in str(link) for link in chain(error))


def hub_file(error: BaseException) -> str | None:
    """``repo (file)`` of the hub file a failed download named, if one did."""
    for link in chain(error):
        found = HUB_FILE.search(f"{link} ")
        if found:
            return f"{found.group(1)} ({found.group(2)})"
    return None


def download_error(error: BaseException, what: str | None = None, local: str | None = None) -> UserError | None:
    """The one-line error for weights that cannot be downloaded, or None when ``error`` is no such failure.

    Args:
        error: what the loader raised.
        what: the weights, as the user named them (``the CLIP weights open_clip:ViT-B-32/openai``); default the
            hub file the error names.
        local: how to use a local copy instead; default: give its path in place of the hub id.
    """
    if not is_unreachable(error):
        return None
    found = hub_file(error)
    named = what or (f"the hub weights {found}" if found else "weights from the Hugging Face hub")
    if what and found:
        named += f" (hub: {found})"
    reason = "offline mode is on (HF_HUB_OFFLINE)" if os.environ.get("HF_HUB_OFFLINE") else "the hub cannot be reached"
    return UserError(
        f"{named} cannot be downloaded: {reason}, and they are not in the local cache; download them once with a "
        f"network (they stay in the cache), or {local or 'give the path of a local copy in place of the hub id'}"
    )


@contextmanager
def weights_fetched(what: str, local: str | None = None) -> Iterator[None]:
    """Turn weights inside that cannot be downloaded into one line naming ``what`` (see :func:`download_error`)."""
    try:
        yield
    except Exception as error:
        told = download_error(error, what, local)
        if told is None:
            raise
        raise told from error


def fetches_weights(option: str, local: str) -> Callable[[F], F]:
    """Decorate a loader whose first parameter is the weights' spec so that weights it cannot download are one line
    naming the spec.

    Args:
        option: the option or config key that named the spec (``clip_model``).
        local: what a local copy is given as (``transformers:<a CLIPModel folder>``).
    """

    def decorate(load: F) -> F:
        signature = inspect.signature(load)

        @functools.wraps(load)
        def loaded(*args: Any, **kwargs: Any) -> Any:
            try:
                return load(*args, **kwargs)
            except Exception as error:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                spec = next(iter(bound.arguments.values()))
                told = download_error(error, f"{option} {spec}", f"set {option} to a local copy: {local}")
                if told is None:
                    raise
                raise told from error

        return loaded  # type: ignore[return-value]

    return decorate
