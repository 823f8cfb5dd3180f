"""Command lines of the tools as users type them: a list option given one value at a time.

The tools' parser reads a list option as one JSON or YAML list (``--lora '["a", "b"]'``); users type
``--lora runs/x/best``, or ``--lora a --lora b``, and list the values of a first list argument one after another
(``sdft compare run a.safetensors``). :func:`as_parsed` turns both into the lists the parser reads.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from types import UnionType
from typing import Any


def as_parsed(tool: Callable[..., object] | type, args: list[str]) -> list[str]:
    """``args`` as the tools' parser reads them: :func:`listed_positionals`, then :func:`listed_options`."""
    return listed_options(tool, listed_positionals(tool, args))


def listed_positionals(tool: Callable[..., object] | type, args: list[str]) -> list[str]:
    """The leading positional values of a tool whose first argument is a list, as the one JSON list the parser
    reads: users type ``sdft compare run a.safetensors``, not ``sdft compare '["run", "a.safetensors"]'``."""
    if isinstance(tool, type):
        return args
    first = next(iter(inspect.signature(tool).parameters.values()), None)
    count = next((index for index, arg in enumerate(args) if arg.startswith("-")), len(args))
    if first is None or "list[" not in str(first.annotation) or count == 0 or args[0].startswith("["):
        return args
    return [json.dumps(args[:count]), *args[count:]]


def listed_options(tool: Callable[..., object] | type, args: list[str]) -> list[str]:
    """``args`` with every list-typed option of ``tool`` given as plain values (``--lora PATH``, repeated or not) as
    one JSON list at the place of its first value; a value that is already a list (``[...]``) is left alone.

    Args:
        tool: the tool's function, or its class whose method the first argument names (``sdft merge loras ...``).
        args: the command line after the tool's name.
    """
    listed = list_parameters(tool, args)
    occurrences: dict[str, list[str | None]] = {}
    for name, value in option_values(args):
        if name in listed:
            occurrences.setdefault(name, []).append(value)
    plain = {
        name: [parsed_value(value, listed[name]) for value in values]
        for name, values in occurrences.items()
        if all(value is not None and not value.lstrip().startswith("[") for value in values)
    }
    result, index = [], 0
    while index < len(args):
        name, _, width = option_at(args, index)
        if name not in plain:
            result += args[index : index + width]
        elif plain[name] is not None:
            result += [f"--{name}", json.dumps(plain[name])]
            plain[name] = None  # the later values are in this list
        index += width
    return result


def option_values(args: list[str]) -> list[tuple[str, str | None]]:
    """The (name, value) of each option in ``args``: ``--name value``, ``--name=value``, or a flag (value None)."""
    found, index = [], 0
    while index < len(args):
        name, value, width = option_at(args, index)
        if name is not None:
            found.append((name, value))
        index += width
    return found


def option_at(args: list[str], index: int) -> tuple[str | None, str | None, int]:
    """The option at ``args[index]``: its name, its value (None for a flag or a positional) and how many arguments
    it takes (2 for ``--name value``)."""
    arg = args[index]
    if not arg.startswith("--") or arg == "--":
        return None, None, 1
    name, equals, value = arg[2:].partition("=")
    if equals:
        return name, value, 1
    if index + 1 < len(args) and not args[index + 1].startswith("--"):
        return name, args[index + 1], 2
    return name, None, 1


def parsed_value(value: str, items: Any) -> Any:
    """A value as a list of ``items`` holds it: numbers and booleans as JSON reads them (``0.5``, ``3``, ``true``),
    anything else (a path, a prompt) as the string itself."""
    if items in (int, float, bool):
        try:
            return json.loads(value)
        except ValueError:
            return value  # the parser names the value it cannot read
    return value


def list_parameters(tool: Callable[..., object] | type, args: list[str]) -> dict[str, Any]:
    """``tool``'s parameters whose type is a list or a tuple (optional or not), with the type of their items."""
    function = tool
    if isinstance(tool, type):
        function = getattr(tool, args[0], None) if args and not args[0].startswith("-") else None
        if not callable(function):
            return {}
    hints = typing.get_type_hints(function)
    found = {name: listed_items(hints.get(name)) for name in inspect.signature(function).parameters}
    return {name: items for name, items in found.items() if items is not NOT_LISTED}


#: what :func:`listed_items` returns for a type that is no list
NOT_LISTED = object()


def listed_items(annotation: Any) -> Any:
    """The item type of a list or tuple type (or of the one a union holds), :data:`NOT_LISTED` for other types."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, UnionType):
        found = [listed_items(member) for member in typing.get_args(annotation)]
        return next((items for items in found if items is not NOT_LISTED), NOT_LISTED)
    if origin in (list, tuple):
        return next(iter(typing.get_args(annotation)), Any)
    return Any if annotation in (list, tuple) else NOT_LISTED
