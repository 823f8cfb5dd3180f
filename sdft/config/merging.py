"""Merge a command line's config files and ``--key value`` options in order, as the parser merges them, into the
values of the command's options; a key that no option takes is a one-line :class:`UserError` naming where it was
written, the key, whose options it is not among, and the closest ones."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

from sdft.config.schema import Schema, is_sdft
from sdft.config.sources import Source
from sdft.config.values import REFUSED, Spec, adapt, load
from sdft.errors import UserError

SPEC_KEYS = {"class_path", "init_args", "dict_kwargs", "$schema"}


class Defer(Exception):
    """The command line needs what only the real parser reads (a sub-config file, a class the schema does not
    list, an abbreviated option): it checks the line after the imports."""


@dataclass(frozen=True)
class At:
    """Where a value was given: its key as a user reads it (``model.init_args.rank``) and its place (the file and
    line, or the command-line option)."""

    key: str
    place: str
    source: Source | None = None
    path: tuple = ()

    def child(self, name: Any, key: str | None = None) -> At:
        key = key or str(name)
        joined = f"{self.key}{key}" if key.startswith("[") or not self.key else f"{self.key}.{key}"
        if self.source is None:
            return At(joined, self.place)
        path = (*self.path, name)
        return At(joined, self.source.place(path), self.source, path)

    def mistake(self, problem: str) -> UserError:
        return located(self.place, self.key, problem)


def located(place: str | None, key: str, problem: str) -> UserError:
    """A one-line error naming where it was given (``file:line``, or the option when it names the key) and the key."""
    if place is None:
        return UserError(f"{key}: {problem}")
    if place.startswith("--") and place[2:].replace(".init_args.", ".") == key.replace(".init_args.", "."):
        return UserError(f"{place}: {problem}")
    return UserError(f"{place}: {key}: {problem}")


def closest(word: str, candidates: list[str]) -> list[str]:
    """The candidates nearest to ``word`` (difflib), those about as near as the nearest."""
    near = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    ratios = [difflib.SequenceMatcher(None, word, each).ratio() for each in near]
    return [each for each, ratio in zip(near, ratios, strict=True) if ratio >= ratios[0] - 0.05]


class Merger:
    """The values of one command's options, merged from its config files and options in order."""

    def __init__(self, schema: Schema, command: str) -> None:
        self.schema = schema
        self.options = schema.command_options(command)
        self.values: dict[str, Any] = {}
        self.places: dict[str, str] = {}

    def add_file(self, source: Source) -> None:
        self.merge(self.options, self.values, source.values, At("", source.name, source))

    def add_option(self, key: str, text: str) -> None:
        at = At(key, f"--{key}")
        name, rest = split_key(self.options, key)
        if name is None:
            if any(other.startswith(key) for other in [*self.options, "config", "print_config"]):
                raise Defer  # a section given a file, or an abbreviated option
            raise unknown_key(self.options, key, at, None)
        option = self.options[name]
        if rest:
            self.set_inside(self.values.get(name), option, rest, text, At(name, at.place))
        else:
            self.set(option, self.values, name, option_text(option["type"], text), at)

    def merge(self, options: dict, target: dict, mapping: dict, at: At, prefix: str = "", owner: str | None = None):
        """Merge a config mapping into ``target``, the values of ``options`` (a command's or a class's)."""
        for key, value in mapping.items():
            name, here = f"{prefix}{key}", at.child(key)
            if key == "$schema":
                continue
            if name in options:
                self.set(options[name], target, name, value, here)
            elif not is_section(options, name):
                raise unknown_key(options, name, here, owner)
            elif isinstance(value, dict):
                self.merge(options, target, value, here, f"{name}.", owner)
            else:
                raise Defer  # a section given as a file

    def set(self, option: dict, target: dict, name: str, value: Any, at: At) -> None:
        kind = option["type"]
        single, listed = class_references(kind)
        if isinstance(value, str) and (single or listed) and os.path.isfile(value):
            raise Defer  # a file holding the class
        if single and (isinstance(value, dict) or (isinstance(value, str) and self.names_class(value, kind, single))):
            value = self.spec(single, target.get(name), value, at)
        elif listed and isinstance(value, list) and all(is_spec(item) for item in value):
            previous = target.get(name)
            previous = previous if isinstance(previous, list) and len(previous) == len(value) else [None] * len(value)
            value = [self.spec(listed, previous[n], item, at.child(n, f"[{n}]")) for n, item in enumerate(value)]
        target[name] = value
        self.places[at.key] = at.place

    def set_inside(self, spec: Any, option: dict, rest: str, text: str, at: At) -> None:
        """``--model.init_args.rank 8``: an option of the class already given to ``option``."""
        if rest == "class_path" or rest.startswith("dict_kwargs.") or not isinstance(spec, Spec) or not spec.key:
            raise Defer
        options = self.schema.class_options(spec.key)
        rest = rest.removeprefix("init_args.")
        here = At(f"{at.key}.init_args.{rest}", at.place)
        name, inner = split_key(options, rest)
        if name is None:
            raise unknown_key(options, rest, here, spec.class_path)
        if inner:
            self.set_inside(
                spec.init_args.get(name), options[name], inner, text, At(f"{at.key}.init_args.{name}", at.place)
            )
        else:
            self.set(options[name], spec.init_args, name, option_text(options[name]["type"], text), here)

    def spec(self, references: list[dict], previous: Any, value: Any, at: At) -> Spec:
        """The class that ``value`` gives (a class path or name, or a mapping), merged onto ``previous`` as the parser
        merges it: the same class keeps its arguments, another keeps those it also takes."""
        value = {"class_path": value} if isinstance(value, str) else value
        if "class_path" not in value and "init_args" not in value:
            value = {"init_args": value}
        class_path = value.get("class_path") or getattr(previous, "class_path", None)
        if class_path is None or set(value) - SPEC_KEYS:
            raise Defer
        found = self.find_class(class_path, references, at.child("class_path") if at.source else at)
        if found is None:
            return Spec(class_path, None, value.get("init_args") or {}, value.get("dict_kwargs"))
        path, key = found
        spec = Spec(path, key, self.kept_arguments(previous, path, key), value.get("dict_kwargs"))
        init_args = value.get("init_args")
        if isinstance(init_args, dict):
            self.merge(self.schema.class_options(key), spec.init_args, init_args, at.child("init_args"), owner=path)
        elif init_args is not None:
            raise Defer
        return spec

    def kept_arguments(self, previous: Any, path: str, key: str) -> dict:
        if not isinstance(previous, Spec) or previous.key is None:
            return {}
        if previous.class_path == path:
            return dict(previous.init_args)
        options = self.schema.class_options(key)
        return {
            name: value
            for name, value in previous.init_args.items()
            if name in options and (isinstance(value, Spec) or adapt(options[name]["type"], value) is not REFUSED)
        }

    def names_class(self, text: str, kind: Any, references: list[dict]) -> bool:
        """Whether ``text`` names a class: an import path, a name of a class of ``references``, or any name where
        only sdft's classes go (an option that also takes a string may take other text, such as a model folder)."""
        if not all(part.isidentifier() for part in text.split(".")):
            return False
        only_sdft = all(is_sdft(each["base"]) for each in references) and not takes_text(kind)
        return "." in text or only_sdft or self.schema.find_class(text, references) is not None

    def find_class(self, name: str, references: list[dict], at: At) -> tuple[str, str] | None:
        """The path and class key of a class the schema lists; None for a class it does not (the parser imports and
        checks it); a :class:`UserError` for a path in sdft, or a name of sdft's classes, that names no class."""
        found = self.schema.find_class(name, references)
        if found or ("." in name and not is_sdft(name)):
            return found
        if "." in name and name.rsplit(".", 1)[-1] in self.schema.sdft_class_names():
            return None  # an sdft class by another module path
        if "." not in name and not all(is_sdft(each["base"]) for each in references):
            return None  # a name the parser may resolve among another package's classes
        known = self.schema.classes_of(references)
        close = closest(name, known if "." in name else [path.rsplit(".", 1)[-1] for path in known])
        hint = f"; did you mean {close[0]}?" if close else f"; sdft has {', '.join(known)}"
        raise at.mistake(f"no class {name}{hint}")


def option_text(kind: Any, text: str) -> Any:
    """A command-line value: YAML when it gives a class, a list of classes or null where classes go; else the text,
    which the parser reads per type."""
    single, listed = class_references(kind)
    if single or listed:
        loaded = load(text)
        if loaded is None or isinstance(loaded, (dict, list)):
            return loaded
    return text


def class_references(kind: Any) -> tuple[list[dict], list[dict]]:
    """The classes a type takes as one value, and as the items of a list."""
    if not isinstance(kind, dict):
        return [], []
    ((form, argument),) = kind.items()
    if form == "class":
        return [argument], []
    if form == "callable":
        return list(argument), []
    if form == "list":
        return [], class_references(argument)[0]
    if form == "union":
        found = [class_references(each) for each in argument]
        return [ref for single, _ in found for ref in single], [ref for _, listed in found for ref in listed]
    return [], []


def takes_text(kind: Any) -> bool:
    """Whether a type takes a string other than a class name (a ``str``, a path, any value, a callable's path)."""
    if isinstance(kind, str):
        return kind in ("str", "path", "any")
    ((form, argument),) = kind.items()
    return form == "callable" or (form == "union" and any(takes_text(each) for each in argument))


def is_spec(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and ("class_path" in value or "init_args" in value)


def is_section(options: dict, name: str) -> bool:
    return any(other.startswith(f"{name}.") for other in options)


def split_key(options: dict, key: str) -> tuple[str | None, str]:
    """The option a dotted key names, and the rest of the key below it (for an option that takes a class)."""
    for name in sorted(options, key=len, reverse=True):
        if key == name:
            return name, ""
        if key.startswith(f"{name}.") and any(class_references(options[name]["type"])):
            return name, key[len(name) + 1 :]
    return None, ""


def unknown_key(options: dict, name: str, at: At, owner: str | None) -> UserError:
    """A key no option takes, with the closest keys of its section."""
    section, _, key = name.rpartition(".")
    while section and not is_section(options, section):
        section, _, head = section.rpartition(".")
        key = f"{head}.{key}"
    prefix = f"{section}." if section else ""
    siblings = list(dict.fromkeys(other[len(prefix) :].split(".")[0] for other in options if other.startswith(prefix)))
    close = closest(key, siblings)
    whose = f" ({owner} has no option {key})" if owner else ""
    hint = f"did you mean {' or '.join(close)}?" if close else "the keys there are " + ", ".join(siblings)
    return at.mistake(f"unknown key{whose}; {hint}")
