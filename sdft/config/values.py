"""Values against the schema's types, adapted as jsonargparse adapts them: the value the parser keeps (and
``--print_config`` prints), :data:`REFUSED` when the parser refuses it, or :data:`UNSURE` when the schema cannot tell
(a class it does not list, a file named where a list goes). A check refuses only what is refused.

As the parser does, a union tries its types in order, each on the value as given: a string stays a string for
``str`` and is read as YAML by the others (``"8"`` is 8 for an ``int``, ``"[a, b]"`` a list for a ``list``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from sdft.config.sources import Loader


class Outcome:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REFUSED = Outcome("REFUSED")
UNSURE = Outcome("UNSURE")
LEAVES = {"int": int, "float": float, "bool": bool}


@dataclass
class Spec:
    """A class given by ``class_path`` and ``init_args``: ``key`` names its options in the schema (None when the
    schema does not list them), and ``init_args`` holds the given options by their dotted names."""

    class_path: str
    key: str | None
    init_args: dict[str, Any] = field(default_factory=dict)
    dict_kwargs: dict | None = None


def load(text: str) -> Any:
    """A string as the parser reads it in place of a value: YAML, or the string itself."""
    if not text.strip():
        return text
    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError:
        return text


def adapt(kind: Any, value: Any) -> Any:
    """``value`` as the parser keeps it for the type ``kind``, REFUSED, or UNSURE."""
    if isinstance(kind, str):
        return adapt_named(kind, value)
    ((form, argument),) = kind.items()
    return ADAPTERS[form](argument, value)


def adapt_named(kind: str, value: Any) -> Any:
    if kind in ("any", "path"):
        return anything(value)
    if kind == "str":
        return value if isinstance(value, str) else REFUSED
    if isinstance(value, str):
        value = load(value)
    if kind == "null":
        return None if value is None else REFUSED
    if kind == "float" and type(value) is int:
        value = float(value)
    return value if type(value) is LEAVES[kind] else REFUSED


def anything(value: Any) -> Any:
    """A value the parser does not check, read as YAML when it is a plain scalar."""
    if contains_class(value):
        return UNSURE
    loaded = load(value) if isinstance(value, str) else value
    return loaded if loaded is None or isinstance(loaded, (bool, int, float)) else value


def adapt_enum(values: list, value: Any) -> Any:
    if isinstance(value, str) and value not in values:
        value = load(value)
    return value if any(value == each and type(value) is type(each) for each in values) else REFUSED


def adapt_union(kinds: list, value: Any) -> Any:
    if "null" in kinds and isinstance(value, str) and load(value) is None:
        return None  # null, before a str would keep it as text
    for kind in kinds:
        adapted = adapt(kind, value)
        if adapted is not REFUSED:
            return adapted
    return REFUSED


def adapt_list(kind: Any, value: Any) -> Any:
    value = structure(value, list)
    if not isinstance(value, (list, tuple)):
        return value if isinstance(value, Outcome) else REFUSED
    return combined([adapt(kind, item) for item in value])


def adapt_tuple(kinds: list, value: Any) -> Any:
    value = structure(value, list)
    if not isinstance(value, (list, tuple)) or len(value) != len(kinds):
        return value if isinstance(value, Outcome) else REFUSED
    return combined([adapt(kind, item) for kind, item in zip(kinds, value, strict=True)])


def adapt_dict(kind: Any, value: Any) -> Any:
    value = structure(value, dict)
    if not isinstance(value, dict):
        return value if isinstance(value, Outcome) else REFUSED
    items = combined([adapt(kind, item) for item in value.values()])
    return items if isinstance(items, Outcome) else dict(zip(value, items, strict=True))


def adapt_callable(references: list, value: Any) -> Any:
    return UNSURE if isinstance(value, str) else class_value(references, value)


def adapt_class(reference: dict, value: Any) -> Any:
    return class_value([reference], value)


def class_value(references: list, value: Any) -> Any:
    """A class: the merge makes each class given a :class:`Spec`, checked and printed option by option; a name
    left here is a class the schema does not list (or no class: the parser tells)."""
    if value is None or isinstance(value, (bool, int, float, list)):
        return REFUSED
    if isinstance(value, str) and not isinstance(load(value), str):
        return REFUSED  # a number, a boolean or null
    if isinstance(value, str) and not all(part.isidentifier() for part in value.split(".")):
        return UNSURE if os.path.isfile(value) else REFUSED  # no import path: a file holding the class, or no class
    return UNSURE


def structure(value: Any, form: type) -> Any:
    """A list or mapping given as a string (YAML, or a file the parser reads: UNSURE), else REFUSED."""
    if not isinstance(value, str):
        return value
    loaded = load(value)
    if isinstance(loaded, form):
        return loaded
    return UNSURE if os.path.isfile(value) else REFUSED


ADAPTERS = {
    "enum": adapt_enum,
    "union": adapt_union,
    "list": adapt_list,
    "tuple": adapt_tuple,
    "dict": adapt_dict,
    "class": adapt_class,
    "callable": adapt_callable,
}


def combined(items: list) -> Any:
    """The adapted items, or REFUSED / UNSURE when one of them is."""
    for outcome in (REFUSED, UNSURE):
        if any(item is outcome for item in items):
            return outcome
    return items


def contains_class(value: Any) -> bool:
    if isinstance(value, dict):
        return "class_path" in value or any(contains_class(item) for item in value.values())
    return isinstance(value, (list, tuple)) and any(contains_class(item) for item in value)


def describe(kind: Any) -> str:
    """A type in words: ``an integer``, ``one of lora, dora or null``, ``a list of strings``."""
    if isinstance(kind, str):
        return NAMES.get(kind, kind)
    ((form, argument),) = kind.items()
    if form == "enum":
        return "one of " + ", ".join(str(each) for each in argument)
    if form == "union":
        return union_words(argument)
    if form in ("list", "dict"):
        return f"a {form} of {PLURALS.get(argument, 'values') if isinstance(argument, str) else 'values'}"
    if form == "tuple":
        return f"a list of {len(argument)} values"
    references = argument if form == "callable" else [argument]
    return "a class (class_path, init_args) of " + " or ".join(each["base"] for each in references)


def union_words(kinds: list) -> str:
    """A union in words, its enumerations merged into one ``one of ...``."""
    values = list(dict.fromkeys(str(v) for kind in kinds if isinstance(kind, dict) for v in kind.get("enum", ())))
    others = [describe(kind) for kind in kinds if not (isinstance(kind, dict) and "enum" in kind)]
    words = (["one of " + ", ".join(values)] if values else []) + others
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "null": "null",
    "path": "a path",
    "any": "any value",
}
PLURALS = {"int": "integers", "float": "numbers", "bool": "booleans", "str": "strings", "path": "paths"}


def shown(value: Any) -> str:
    """A value as the user wrote it, on one line."""
    if isinstance(value, Spec):
        return value.class_path
    if isinstance(value, str):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
