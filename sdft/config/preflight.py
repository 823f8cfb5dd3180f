"""``sdft fit`` / ``validate`` / ``test`` / ``predict`` before the heavy imports: the help, the printed config, and
each mistake in the config as one line, answered from ``schema.json``. What the schema cannot tell (a class it does
not list, a sub-config file, an abbreviated option) is left to the real parser, which runs after the imports in any
case."""

from __future__ import annotations

from typing import Any

import yaml

from sdft.config.merging import Defer, Merger, closest, located
from sdft.config.schema import Schema, load_schema
from sdft.config.sources import read_command_line, read_config
from sdft.config.usage import usage_text
from sdft.config.values import REFUSED, UNSURE, Outcome, Spec, adapt, describe, shown
from sdft.errors import UserError


def preflight(argv: list[str]) -> str | None:
    """Answer a LightningCLI command line (``fit --config ...``) from the schema: the text to print for ``--help``
    or ``--print_config``, or None when the command goes on to the real parser. A mistake the parser would refuse
    is a :class:`UserError` of one line naming its file and line (or option), the key and the fix."""
    schema = load_schema()
    line = read_command_line(argv) if schema is not None and schema.command_options(argv[0]) else None
    if line is None:
        return None
    if line.help:
        return usage_text(schema, line.command) if not line.steps and not line.print_config else None
    try:
        merger = merged(schema, line.command, line.steps)
        check_options(schema, merger.options, merger.values, merger.places, "")
        if line.print_config:
            return printed_config(schema, merger)
        check_names(schema, merger.values, merger.places)
        return None
    except Defer:
        return None


def merged(schema: Schema, command: str, steps: list[tuple[str, str]]) -> Merger:
    merger = Merger(schema, command)
    for key, value in steps:
        if key == "config":
            merger.add_file(read_config(value))
        else:
            merger.add_option(key, value)
    return merger


def check_options(schema: Schema, options: dict, values: dict, places: dict, prefix: str) -> None:
    """Refuse the first value of ``values`` that its option's type refuses."""
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, Spec):
            check_class(schema, value, key, places)
        elif isinstance(value, list) and any(isinstance(item, Spec) for item in value):
            for number, item in enumerate(value):
                check_class(schema, item, f"{key}[{number}]", places)
        elif adapt(options[name]["type"], value) is REFUSED:
            raise mistake(places, key, wrong_value(options[name]["type"], value))


def check_class(schema: Schema, spec: Any, key: str, places: dict) -> None:
    if isinstance(spec, Spec) and spec.key is not None:
        check_options(schema, schema.class_options(spec.key), spec.init_args, places, f"{key}.init_args.")


def wrong_value(kind: Any, value: Any) -> str:
    words = [str(each) for each in enumerations(kind)]
    close = closest(value, words) if isinstance(value, str) else []
    return f"expects {describe(kind)}, got {shown(value)}" + (f"; did you mean {close[0]}?" if close else "")


def enumerations(kind: Any) -> list:
    if not isinstance(kind, dict):
        return []
    return kind.get("enum", []) + [value for each in kind.get("union", ()) for value in enumerations(each)]


def check_names(schema: Schema, values: dict, places: dict) -> None:
    """``trainer.strategy`` and ``trainer.accelerator`` given by name: a name Lightning registers (the parser takes
    any string; the trainer refuses the others when it is built, which a printed config never reaches)."""
    for key, value in values.items():
        names = schema.names(key)
        if names is None or not isinstance(value, str) or value.lower() in names:
            continue
        close = closest(value.lower(), names)
        hint = f"did you mean {close[0]}?" if close else "Lightning's are " + ", ".join(names)
        raise mistake(places, key, f"no {key.split('.')[-1]} named {value!r}; {hint}")


def mistake(places: dict, key: str, problem: str) -> UserError:
    """A one-line error at the place ``key`` (or the nearest key above it) was given."""
    above = key
    while above and above not in places:
        above = above.rpartition(".")[0]
    return located(places.get(above), key, problem)


def printed_config(schema: Schema, merger: Merger) -> str | None:
    """The config as ``--print_config`` prints it, or None when a class or default is beyond the schema."""
    tree = printed_options(schema, merger.options, merger.values)
    if tree is UNSURE:
        return None
    body = yaml.safe_dump(tree, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return f"# {schema.raw['header']}\n{body}"


def printed_options(schema: Schema, options: dict, values: dict) -> Any:
    tree: dict = {}
    for name, option in options.items():
        value = (
            printed_value(schema, option["type"], values[name]) if name in values else printed_default(schema, option)
        )
        if value is UNSURE:
            return UNSURE
        *sections, last = name.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    return tree


def printed_value(schema: Schema, kind: Any, value: Any) -> Any:
    if isinstance(value, Spec):
        return printed_class(schema, value)
    if isinstance(value, list) and any(isinstance(item, Spec) for item in value):
        items = [printed_class(schema, item) for item in value]
        return UNSURE if any(item is UNSURE for item in items) else items
    adapted = adapt(kind, value)
    return UNSURE if adapted is REFUSED else adapted


def printed_default(schema: Schema, option: dict) -> Any:
    """A default as the parser prints it: through its type (a float default written ``0`` prints ``0.0``)."""
    if "default" not in option:
        return UNSURE
    adapted = adapt(option["type"], option["default"])
    return option["default"] if isinstance(adapted, Outcome) else adapted


def printed_class(schema: Schema, spec: Any) -> Any:
    if not isinstance(spec, Spec) or spec.key is None or spec.dict_kwargs:
        return UNSURE
    init_args = printed_options(schema, schema.class_options(spec.key), spec.init_args)
    return UNSURE if init_args is UNSURE else {"class_path": spec.class_path, "init_args": init_args}
