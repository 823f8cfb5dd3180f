"""Extract ``schema.json``: the options of sdft's LightningCLI commands and of the classes a config can name, read
from the parsers jsonargparse builds for them, so that names, order, types and printed defaults are the parser's own.

``uv run python -m sdft.config.extraction`` rewrites the file; a test fails while it differs from what this module
extracts, so it cannot fall behind a signature.
"""

from __future__ import annotations

import collections.abc
import enum
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import sys
import types
import typing
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from jsonargparse._typehints import ActionTypeHint, get_all_subclass_paths
from jsonargparse._util import get_import_path, import_object

import sdft
from sdft.config.schema import PACKAGES, SCHEMA_FILE, class_key, file_digest, is_sdft, relative_name
from sdft.lightning_cli import SdftCLI, sdft_cli

#: the class paths whose options are listed, and so checked; a config may name any other class, unchecked
CHECKED = ("sdft.", "lightning.pytorch.callbacks.", "lightning.pytorch.loggers.", "torch.optim.")
#: the bases whose subclasses a config names (a torch.nn.Module is no config's business)
CONFIG_BASES = ("sdft.", "lightning.", "torch.optim.")
SEQUENCES = (list, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable)
SEQUENCES += (collections.abc.Set, collections.abc.Collection)
MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


class Extractor:
    """Walks parsers and the class types their options take, collecting each class's options once."""

    def __init__(self) -> None:
        self.bases: dict[str, list[str]] = {}
        self.classes: dict[str, dict] = {}

    def options(self, parser: ArgumentParser) -> list[dict]:
        """The options of ``parser`` in its order: name (dotted), type, printed default (absent when required), help."""
        dumped = printed_defaults(parser)
        found = []
        for action in parser._actions:
            if action.dest == "help" or action.dest.endswith(".help") or type(action).__name__ in SKIPPED_ACTIONS:
                continue
            option = {"name": action.dest, "type": self.type_of(action)}
            default = nested_get(dumped, action.dest) if dumped is not None else plain(action.default)
            if default is UNPRINTABLE:
                option["unprintable"] = True
            elif not action.required:
                option["default"] = default
            if action.help and action.help != "==SUPPRESS==":
                option["help"] = action.help
            found.append(option)
        return found

    def type_of(self, action) -> Any:
        if not isinstance(action, ActionTypeHint):
            return "any"
        return self.hint(action._typehint, getattr(action, "sub_add_kwargs", None) or {})

    def hint(self, hint, sub_add_kwargs: dict) -> Any:
        """A type hint as schema.json writes it: a name (``int``, ``path``, ``any``, ...) or a one-key object."""
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Annotated:
            return self.hint(args[0], sub_add_kwargs)
        if hint in (bool, int, float, str) or hint is type(None):
            return {type(None): "null"}.get(hint, getattr(hint, "__name__", "any"))
        if origin is typing.Literal:
            return {"enum": list(args)} if all(is_json(arg) for arg in args) else "any"
        if origin in (typing.Union, types.UnionType):
            return {"union": [self.hint(arg, sub_add_kwargs) for arg in args]}
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return {"enum": list(hint.__members__)}
        if isinstance(hint, type) and issubclass(hint, os.PathLike):
            return "path"
        if origin is tuple:
            if args and args[-1] is not Ellipsis:
                return {"tuple": [self.hint(arg, sub_add_kwargs) for arg in args]}
            return {"list": self.hint(args[0], sub_add_kwargs) if args else "any"}
        if origin in SEQUENCES:
            return {"list": self.hint(args[0], sub_add_kwargs) if args else "any"}
        if origin in MAPPINGS:
            return {"dict": self.hint(args[1], sub_add_kwargs) if len(args) == 2 else "any"}
        if origin is collections.abc.Callable:
            return self.callable_hint(hint, sub_add_kwargs)
        if ActionTypeHint.is_subclass_typehint(hint):
            return {"class": self.base(hint, sub_add_kwargs, skip=0)}
        return "any"

    def callable_hint(self, hint, sub_add_kwargs: dict) -> Any:
        """A callable returning a class: an import path, or a class spec without the arguments the call gives."""
        if not getattr(hint, "__args__", None):
            return "any"
        returned = hint.__args__[-1]
        classes = typing.get_args(returned) if typing.get_origin(returned) is typing.Union else (returned,)
        if not all(ActionTypeHint.is_subclass_typehint(each) for each in classes):
            return "any"
        skip = len(hint.__args__) - 1
        return {"callable": [self.base(each, sub_add_kwargs, skip) for each in classes]}

    def base(self, base: type, sub_add_kwargs: dict, skip: int) -> dict:
        """The reference to a base class: its key in ``bases``, and how many leading arguments a call gives."""
        key = get_import_path(base)
        if key not in self.bases:
            paths = get_all_subclass_paths(base) if key.startswith(CONFIG_BASES) else []
            self.bases[key] = sorted(path for path in paths if path.startswith(CHECKED))
        for path in self.bases[key]:
            self.add_class(path, sub_add_kwargs, skip)
        return {"base": key, "skip": skip} if skip else {"base": key}

    def add_class(self, path: str, sub_add_kwargs: dict, skip: int) -> None:
        """Collect the options of a class, unless jsonargparse cannot describe it (then it stays unchecked)."""
        key = class_key(path, skip)
        if key in self.classes:
            return
        self.classes[key] = {"options": []}  # the class may take itself as an argument
        kwargs = {name: value for name, value in sub_add_kwargs.items() if name != "linked_targets"}
        if skip:
            kwargs["skip"] = {*kwargs.get("skip", ()), skip}
        parser = ArgumentParser(exit_on_error=False)
        try:
            parser.add_class_arguments(import_object(path), **kwargs)
        except Exception:
            del self.classes[key]
            return
        self.classes[key] = {"options": self.options(parser)}


SKIPPED_ACTIONS = ("_HelpAction", "_ActionHelpClassPath", "_ActionConfigLoad", "_ActionPrintConfig", "ActionConfigFile")


class ParsersBuilt(Exception):
    """Carries the parsers of :class:`ParsersOnly` out of its constructor."""


class ParsersOnly(SdftCLI):
    """sdft's LightningCLI that stops once its command parsers are built, parsing nothing."""

    def parse_arguments(self, parser, args) -> None:
        raise ParsersBuilt(self._subcommand_parsers)


def command_parsers() -> dict[str, ArgumentParser]:
    """The parser of each LightningCLI command of sdft (fit, validate, test, predict)."""
    try:
        sdft_cli([], cli_class=ParsersOnly)
    except ParsersBuilt as built:
        return built.args[0]
    raise AssertionError("the parsers were never built")


UNPRINTABLE = object()


def printed_defaults(parser: ArgumentParser) -> dict | None:
    """The defaults of ``parser`` as ``--print_config`` prints them, or None when they do not print."""
    for skip_validation in (False, True):
        try:
            return yaml.safe_load(parser.dump(parser.get_defaults(), skip_unset=False, skip_validation=skip_validation))
        except Exception:  # a required option without a value, or a default that jsonargparse cannot dump
            continue
    return None


def plain(value: Any) -> Any:
    """A default as YAML prints it, or UNPRINTABLE."""
    if is_json(value):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        items = [plain(item) for item in value]
        return UNPRINTABLE if UNPRINTABLE in items else items
    return UNPRINTABLE


def nested_get(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def is_json(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def import_every_module() -> None:
    """Import every sdft module, so that every class of sdft is a known subclass of its base."""
    for module in pkgutil.walk_packages(sdft.__path__, "sdft."):
        importlib.import_module(module.name)


def source_files(classes: dict) -> list[Path]:
    """The files sdft's classes take their options from: the modules defining them and their sdft bases, and those
    defining the types and defaults of their parameters (``Adapter`` in ``methods/adapters.py``)."""
    modules = set()
    for key in classes:
        if is_sdft(key):
            for each in import_object(key.split(":")[0]).__mro__:
                modules |= signature_modules(each) if is_sdft(each.__module__) else set()
    return sorted(Path(importlib.util.find_spec(module).origin) for module in modules)


def signature_modules(cls: type) -> set[str]:
    """The sdft modules of a class and of the types and defaults its own ``__init__`` names."""
    found = {cls.__module__}
    init = cls.__dict__.get("__init__")
    if init is None:
        return found
    defaults = [parameter.default for parameter in inspect.signature(init).parameters.values()]
    for value in [*typing.get_type_hints(init).values(), *defaults]:
        found |= modules_holding(value)
    return found


def modules_holding(value: Any) -> set[str]:
    """The sdft modules that define ``value`` (a class, a type alias, a default), and those of its type arguments."""
    found = set()
    for each in (value, type(value)):
        module = getattr(each, "__module__", None) if isinstance(each, type) else None
        if module and is_sdft(module):
            found.add(module)
    if typing.get_origin(value) is not None:  # an alias (Adapter = Literal[...]) is known by the modules holding it
        found |= {
            name for name, module in sdft_modules().items() if any(held is value for held in vars(module).values())
        }
    for argument in typing.get_args(value):
        found |= modules_holding(argument)
    return found


def sdft_modules() -> dict[str, types.ModuleType]:
    return {name: module for name, module in list(sys.modules.items()) if is_sdft(name) and module is not None}


def build_schema() -> dict:
    """The schema of sdft's LightningCLI commands, as ``schema.json`` holds it."""
    import lightning.pytorch as pl
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    import_every_module()
    extractor = Extractor()
    commands = {
        name: {"description": parser.description, "options": extractor.options(parser)}
        for name, parser in command_parsers().items()
    }
    return {
        "versions": {package: version(package) for package in PACKAGES},
        "header": f"lightning.pytorch=={pl.__version__}",
        "names": {
            "trainer.strategy": sorted({"auto", *StrategyRegistry.available_strategies()}),
            "trainer.accelerator": sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()}),
        },
        "sources": {relative_name(file): file_digest(file) for file in source_files(extractor.classes)},
        "commands": commands,
        "bases": dict(sorted(extractor.bases.items())),
        "classes": dict(sorted(extractor.classes.items())),
    }


def schema_text(schema: dict) -> str:
    return json.dumps(schema, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jsonargparse's notes about defaults it cannot dump, which stay unprinted
        schema = build_schema()
    Path(SCHEMA_FILE).write_text(schema_text(schema), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
